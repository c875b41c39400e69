"""Random-access data sources for ``grain.MapDataset``.

Every training source has ``len``, ``__getitem__(index) -> record`` and a
``description`` naming where the data lives (used in error messages). A record
is a dict with ``"image"`` (encoded bytes or a decoded uint8 array), ``"name"``
(the file path or record id, for logs) and, for sources that have them,
``"labels"`` (a segmentation label map, encoded or decoded). Records are not
decoded here: decoding, and skipping what cannot be decoded, happens in the
pipeline's per-record transform. Sources are plain picklable objects so Grain
can ship them to worker processes.

* ``ImageFolderSource``: every jpg/jpeg/png/webp/bmp below a folder, recursive,
  sorted by relative path; optional label maps in a parallel folder.
* ``EvalFolderSource``: a LaMa evaluation folder of ``name.png`` +
  ``name_maskNNN.png`` pairs (docs/parity.md, "Prediction and refinement").
* ``TfdsSource``: a prepared TFDS data set (``places365_small`` or one made by
  ``lama_jax.data.build_tfds``) read through ``tfds.data_source``.
* ``SyntheticSource``: procedurally drawn images with label maps (no files).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import cv2
import numpy as np

from lama_jax.data import images


def _list_images(root: pathlib.Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for filename in filenames:
            if images.is_image_file(pathlib.Path(filename)):
                found.append(pathlib.Path(dirpath, filename).relative_to(root).as_posix())
    return sorted(found)


class ImageFolderSource:
    """All images below ``root`` (recursive, sorted by relative path).

    With ``segm_dir``, each image ``rel/name.ext`` has a label map
    ``segm_dir/rel/name.png`` (one channel, 8 or 16 bit, 0 = background).
    """

    def __init__(self, root: str | os.PathLike, *, segm_dir: str | os.PathLike | None = None):
        root = pathlib.Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist or is not a folder")
        self.root = str(root)
        self.relpaths = _list_images(root)
        if not self.relpaths:
            raise FileNotFoundError(
                f"no images ({'/'.join(e[1:] for e in images.IMAGE_EXTENSIONS)}) found under {root}")
        self.segm_dir = None
        if segm_dir is not None:
            if not pathlib.Path(segm_dir).is_dir():
                raise FileNotFoundError(f"label-map folder {segm_dir} does not exist")
            self.segm_dir = str(segm_dir)

    @property
    def description(self) -> str:
        return f"image folder {self.root}"

    @property
    def has_labels(self) -> bool:
        return self.segm_dir is not None

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        relpath = self.relpaths[index]
        path = os.path.join(self.root, relpath)
        record = {"image": images.read_bytes(path), "name": path}
        if self.segm_dir is not None:
            label_path = os.path.join(self.segm_dir, os.path.splitext(relpath)[0] + ".png")
            record["labels"] = images.read_bytes(label_path)
        return record


def list_eval_masks(root: str | os.PathLike, suffix: str = ".png") -> list[str]:
    """Every ``*mask*<suffix>`` under `root`, recursive and sorted; hidden folders and files are skipped,
    as by LaMa's recursive glob. Raises FileNotFoundError naming `root` when there are none."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{str(root)!r} is not a directory")
    masks = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        masks.extend(os.path.join(folder, f) for f in files
                     if "mask" in f and f.endswith(suffix) and not f.startswith("."))
    if not masks:
        raise FileNotFoundError(f"no '*mask*{suffix}' files under {str(root)!r}")
    return sorted(masks)


def mask_image_path(mask_path: str | os.PathLike, img_suffix: str = ".png") -> pathlib.Path:
    """LaMa's pairing rule: the mask's path cut at its last ``_mask``, plus ``img_suffix``."""
    return pathlib.Path(str(mask_path).rsplit("_mask", 1)[0] + img_suffix)


class EvalFolderSource:
    """A LaMa evaluation folder: every ``*mask*.png`` of `list_eval_masks` with its image.

    Records: ``{"image": bytes, "mask": bytes, "name": mask path relative to the
    folder, without extension}``. A mask whose image is missing is an error here,
    not at evaluation time.
    """

    def __init__(self, root: str | os.PathLike, *, img_suffix: str = ".png"):
        self.root = str(root)
        self.pairs = []
        for mask_path in list_eval_masks(root):
            image_path = mask_image_path(mask_path, img_suffix)
            if not image_path.is_file():
                raise FileNotFoundError(f"mask {mask_path} has no image: expected {image_path}")
            self.pairs.append((str(image_path), str(mask_path)))

    @property
    def description(self) -> str:
        return f"evaluation folder {self.root}"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path = self.pairs[index]
        name = pathlib.Path(mask_path).relative_to(self.root).with_suffix("").as_posix()
        return {"image": images.read_bytes(image_path), "mask": images.read_bytes(mask_path),
                "name": name, "image_path": image_path, "mask_path": mask_path}


class TfdsSource:
    """Images of a prepared TFDS data set, via ``tfds.data_source`` (no TensorFlow).

    TFDS decodes the ``image`` feature (with OpenCV) into a uint8 array.
    """

    def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None):
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
        self.name, self.split = name, split
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises many types for a missing or unprepared data set.
            where = data_dir or "the default TFDS data_dir"
            # TFDS's own message can list every data set it knows, hundreds of lines: its first line only.
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise FileNotFoundError(
                f"TFDS data set {name!r} split {split!r} is not prepared in {where} ({reason}); pack an image "
                f"folder with `python -m lama_jax.data.build_tfds --input DIR --name {name} --data-dir DIR` "
                "and pass that DIR as tfds_data_dir (--config.data.tfds_data_dir=DIR)") from e
        if len(self._source) == 0:
            raise FileNotFoundError(f"TFDS data set {name!r} split {split!r} has no records")

    @property
    def description(self) -> str:
        return f"TFDS {self.name}[{self.split}]"

    has_labels = False

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record_id = f"{self.name}/{self.split}[{index}]"
        try:
            record = self._source[index]
        except Exception as e:  # A damaged record surfaces as whatever its decoder raises.
            raise images.UnreadableImageError(f"{record_id}: {type(e).__name__}: {e}") from e
        filename = record.get("filename")
        if isinstance(filename, bytes):
            filename = filename.decode("utf-8", "replace")
        return {"image": record["image"], "name": f"{record_id} {filename}" if filename else record_id}


class SyntheticSource:
    """Procedural images, a pure function of (seed, index): gradients, stripes and shapes.

    Each record also carries a label map of its shapes (0 = background), so
    segmentation masks can be tested without files.
    """

    def __init__(self, num_records: int = 64, *, height: int = 288, width: int = 352, seed: int = 0):
        if num_records <= 0:
            raise ValueError(f"synthetic source needs num_records > 0, got {num_records}")
        self.num_records, self.height, self.width, self.seed = num_records, height, width, seed

    description = "synthetic images"
    has_labels = True

    def __len__(self) -> int:
        return self.num_records

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_records:
            raise IndexError(f"synthetic record {index} out of range [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, index])
        h, w = self.height, self.width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        direction = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(direction) * xx / w + np.sin(direction) * yy / h + 1) / 2
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        image = c0 + ramp[..., None] * (c1 - c0)
        period = rng.uniform(8, 40)
        image += 20 * np.sin(2 * np.pi * (xx + yy * rng.uniform(-1, 1)) / period)[..., None]
        image = np.clip(image, 0, 255).astype(np.uint8)
        labels = np.zeros((h, w), np.uint16)
        for label in range(1, int(rng.integers(3, 7)) + 1):
            color = tuple(int(c) for c in rng.integers(0, 256, size=3))
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(10, w // 4)), int(rng.integers(10, h // 4)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(image, center, axes, angle, 0, 360, color, -1)
            cv2.ellipse(labels, center, axes, angle, 0, 360, label, -1)
        return {"image": image, "labels": labels, "name": f"synthetic/{self.seed}/{index}"}
