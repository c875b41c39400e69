r"""Packs a local image folder into a TFDS data set (array_record), without TensorFlow.

    python -m lama_jax.data.build_tfds --input DIR --name NAME --data-dir DIR [--split train]

Every image under ``--input`` (recursive, sorted; jpg/jpeg/png/webp/bmp) becomes
one record ``{"image", "filename"}``. Files are checked on the way in: an
8-bit RGB JPEG or PNG is stored byte for byte, any other readable image
(grayscale, RGBA, palette, CMYK, 16-bit, WebP, BMP) is converted to RGB and
stored as PNG, and unreadable files are logged and left out. Read the result
with ``tfds.data_source(NAME, split=..., data_dir=DIR)`` or, in a training
config, ``source="tfds", tfds_name=NAME, tfds_data_dir=DIR``.
"""

from __future__ import annotations

import pathlib
import re
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from lama_jax import cli
from lama_jax.data import images
from lama_jax.data import sources

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
_STORED_AS_IS = (b"\xff\xd8", b"\x89PNG\r\n\x1a\n")  # JPEG and PNG signatures


def storable_bytes(data: bytes, name: str) -> bytes:
    """The bytes to store for one file: the original if TFDS will decode it to uint8 RGB, else a PNG."""
    image = images.decode_image(data, name)  # raises UnreadableImageError
    if data.startswith(_STORED_AS_IS):
        # TFDS decodes with IMREAD_UNCHANGED: keep the file only if that yields 8-bit, 3 channels.
        raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if raw is not None and raw.dtype == np.uint8 and raw.ndim == 3 and raw.shape[2] == 3:
            return data
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise images.UnreadableImageError(f"{name}: could not re-encode as PNG")
    return encoded.tobytes()


class LocalImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of a local folder (``manual_dir``); subclassed per data set name by ``builder_class``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images packed from a local folder by lama_jax.data.build_tfds."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Pass the image folder as the manual_dir of the DownloadConfig."
    SPLIT = "train"

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Images packed from a local folder by lama_jax.data.build_tfds.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "filename": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        return {self.SPLIT: self._generate_examples(pathlib.Path(dl_manager.manual_dir))}

    def _generate_examples(self, root: pathlib.Path) -> Iterator[tuple[str, dict[str, Any]]]:
        folder = sources.ImageFolderSource(root)
        for relpath in folder.relpaths:
            path = root / relpath
            try:
                data = storable_bytes(images.read_bytes(path), str(path))
            except images.UnreadableImageError as e:
                logging.warning("build_tfds: leaving out %s", e)
                continue
            yield relpath, {"image": data, "filename": relpath}


def builder_class(name: str, split: str = "train") -> type[LocalImageFolder]:
    """A LocalImageFolder subclass whose TFDS name is ``name``."""
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"data set name {name!r} must be lower snake_case (letters, digits, _)")
    class_name = "".join(part.capitalize() for part in name.split("_")) or "Images"
    attributes = {"name": name, "SPLIT": split, "__module__": __name__}
    return type(class_name, (LocalImageFolder,), attributes, skip_registration=True)


def build(input_dir: str | pathlib.Path, *, name: str, data_dir: str | pathlib.Path,
          split: str = "train") -> tfds.core.DatasetBuilder:
    """Prepares data set ``name`` from ``input_dir`` into ``data_dir``; returns its builder."""
    input_dir = pathlib.Path(input_dir)
    builder_type = builder_class(name, split)
    sources.ImageFolderSource(input_dir)  # a missing or empty folder is said here, not deep inside TFDS
    builder = builder_type(data_dir=str(data_dir))
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(input_dir)))
    return builder


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m lama_jax.data.build_tfds",
                                description="Pack a local image folder into a TFDS data set (array_record).")
    parser.add_argument("--input", required=True, help="image folder (recursive)")
    parser.add_argument("--name", required=True, help="TFDS data set name, lower snake_case")
    parser.add_argument("--data-dir", required=True, help="TFDS data_dir to write into")
    parser.add_argument("--split", default="train", help="split name (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        builder = build(args.input, name=args.name, data_dir=args.data_dir, split=args.split)
    except (OSError, ValueError) as e:
        return cli.error(e)
    count = builder.info.splits[args.split].num_examples
    print(f"{args.name}[{args.split}]: {count} images in {builder.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
