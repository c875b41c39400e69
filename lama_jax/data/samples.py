"""The built-in sample photos (data/samples/), the zero-download default data set.

Six public-domain / CC0 photos (see data/samples/LICENSE.md) ship with the
repository so that training smoke runs, evaluation and the pipeline benchmark
work without any download. They are located relative to the source tree
(``lama_jax/../data/samples``), which is where an editable install finds them.
"""

from __future__ import annotations

import pathlib

from lama_jax.data import images

SAMPLES_DIR = pathlib.Path(__file__).resolve().parents[2] / "data" / "samples"


def samples_dir() -> pathlib.Path:
    """The folder holding the sample photos; a clear error when it is missing."""
    if not SAMPLES_DIR.is_dir():
        raise FileNotFoundError(
            f"built-in sample photos not found at {SAMPLES_DIR}; they ship in the repository's "
            "data/samples/ folder, so install lama_jax from a checkout (pip install -e .) "
            "or point data_config.source='folder' / train_dir at your own images")
    return SAMPLES_DIR


def sample_photo_paths() -> list[pathlib.Path]:
    """Sorted paths of the built-in sample photos."""
    folder = samples_dir()
    paths = sorted(p for p in folder.iterdir() if p.is_file() and images.is_image_file(p))
    if not paths:
        raise FileNotFoundError(f"no sample photos (jpg/jpeg/png/webp/bmp) in {folder}")
    return paths
