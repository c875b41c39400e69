"""The built-in sample photos, the zero-download default data set.

Six public-domain / CC0 photos (see ``lama_jax/data/sample_photos/LICENSE.md``; the
checkout's ``data/samples`` links there) ship inside the package, so training
smoke runs, evaluation and the pipeline benchmark work without any download,
from a checkout or from an installed wheel alike.
"""

from __future__ import annotations

import pathlib

from lama_jax.data import images

SAMPLES_DIR = pathlib.Path(__file__).resolve().parent / "sample_photos"


def samples_dir() -> pathlib.Path:
    """The folder holding the sample photos; a clear error when it is missing."""
    if not SAMPLES_DIR.is_dir():
        raise FileNotFoundError(
            f"built-in sample photos not found at {SAMPLES_DIR}: this lama_jax installation is "
            "incomplete (reinstall it), or point config.data.source='folder' and train_dir at your "
            "own images")
    return SAMPLES_DIR


def sample_photo_paths() -> list[pathlib.Path]:
    """Sorted paths of the built-in sample photos."""
    folder = samples_dir()
    paths = sorted(p for p in folder.iterdir() if p.is_file() and images.is_image_file(p))
    if not paths:
        raise FileNotFoundError(f"no sample photos (jpg/jpeg/png/webp/bmp) in {folder}")
    return paths
