"""The host input pipeline: deterministic, resumable training batches and frozen eval batches.

Training (``create_train_iterator``) is a Grain dataset::

    record indices → shuffle(seed) → repeat                      (record_order)
      → random_map(read + decode + augment + mask, per-position RNG)
      → batch(global batch / hosts) → every host_count-th batch from host_index
      → to_iter_dataset → mp_prefetch(num_workers) → uint8 to float32

Every random number of a sample comes from the generator Grain derives from the
seed and the sample's position in one global stream, and global batch ``t`` is
that stream's samples ``[t*B, (t+1)*B)``, of which host ``i`` of ``n`` reads rows
``[i*B/n, (i+1)*B/n)``. So the hosts read disjoint parts of the stream, and the
global batches are the same for any number of hosts and workers, and after
restoring the iterator state mid-epoch. The state (``iterator.get_state()``,
or ``grain.checkpoint.CheckpointSave``) is what a checkpoint stores; it is tied
to ``num_workers``.

Unreadable records (corrupt, truncated, empty, unreadable files, images under 8
px) never stop training: the per-record transform logs the path and reason and
reads a replacement drawn from the same per-record generator, so the stream
stays deterministic. Each batch carries ``"skipped"``, int32 (B,), the number of
files skipped while producing each sample, which works unchanged with worker
processes; the train loop sums it for its metrics. After ``max_bad_in_a_row``
unreadable files in a row a ``NoReadableImageError`` names the data set.
Images whose shorter side is below the crop size are upscaled to it first.

Evaluation (``create_eval_batches``) reads a LaMa evaluation folder, or, without
one, makes a frozen set from the built-in sample photos with
``gen_masks.make_eval_example`` and a fixed seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import cv2
import grain
import ml_collections
import numpy as np
from absl import logging

from lama_jax.data import augment
from lama_jax.data import gen_masks
from lama_jax.data import images
from lama_jax.data import masks
from lama_jax.data import samples
from lama_jax.data import sources

DEFAULT_MAX_BAD_IN_A_ROW = 64
_MIN_SHUFFLE_DOMAIN = 4096


class NoReadableImageError(RuntimeError):
    """Raised when a data set yields only unreadable records."""


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, ml_collections.ConfigDict):
        return value.to_dict()
    return dict(value)


def make_train_source(data_config: ml_collections.ConfigDict):
    """The random-access training source named by ``data_config.source``."""
    kind = data_config.source
    if kind == "samples":
        return sources.ImageFolderSource(samples.samples_dir())
    if kind == "folder":
        if not data_config.train_dir:
            raise ValueError("data_config.source='folder' needs data_config.train_dir")
        return sources.ImageFolderSource(data_config.train_dir, segm_dir=data_config.get("segm_dir"))
    if kind == "tfds":
        return sources.TfdsSource(data_config.tfds_name, split=data_config.tfds_split,
                                  data_dir=data_config.tfds_data_dir)
    if kind == "synthetic":
        return sources.SyntheticSource(data_config.get("synthetic_records", 64))
    raise ValueError(f"unknown data_config.source {kind!r}; use samples, folder, tfds or synthetic")


def fit_short_side(image: np.ndarray, min_side: int) -> np.ndarray:
    """Upscales (bicubic, aspect kept) an image whose shorter side is below ``min_side``."""
    if min(image.shape[:2]) >= min_side:
        return image
    return augment.resize_short_side(image, min_side)


class TrainSampleMaker:
    """Grain random_map transform: record index → {"image" uint8, "mask" uint8, "skipped"}.

    Module-level and picklable, as Grain's spawned workers require.
    """

    def __init__(self, source, *, transform: str, crop_size: int, mask_generator: masks.MaskGenerator,
                 max_bad_in_a_row: int = DEFAULT_MAX_BAD_IN_A_ROW):
        self.source = source
        self.transform = augment.get_transform(transform)
        self.crop_size = crop_size
        self.mask_generator = mask_generator
        self.max_bad_in_a_row = max_bad_in_a_row
        self.needs_labels = getattr(mask_generator, "needs_labels", False)

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        record = self.source[index]
        image = images.decode_image(record["image"], record["name"])
        labels = None
        if self.needs_labels:
            labels = images.decode_label_map(record["labels"], f"labels of {record['name']}")
            if labels.shape != image.shape[:2]:
                raise images.UnreadableImageError(
                    f"{record['name']}: label map is {labels.shape}, image is {image.shape[:2]}")
        return image, labels

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        skipped = 0
        while True:
            try:
                image, labels = self._read(int(index))
                break
            except images.UnreadableImageError as e:
                skipped += 1
                logging.warning("Skipping unreadable training image %s", e)
                if skipped >= self.max_bad_in_a_row:
                    raise NoReadableImageError(
                        f"{skipped} unreadable images in a row from {self.source.description} "
                        f"(last: {e}); does it contain readable images?") from e
                index = rng.integers(len(self.source))
        image = fit_short_side(image, self.crop_size)
        if labels is not None and labels.shape != image.shape[:2]:
            labels = cv2.resize(labels, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        image, labels = self.transform(rng, image, self.crop_size, labels)
        mask = self.mask_generator(rng, self.crop_size, self.crop_size, labels=labels)
        # uint8 until after batching: a quarter of the bytes through worker shared
        # memory and the batch copy; to_float_batch converts once per batch.
        return {
            "image": image,
            "mask": mask.astype(np.uint8)[:, :, None],
            "skipped": np.int32(skipped),
        }


def to_float_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """uint8 image/mask batch → float32 image in [0, 1] and float32 0/1 mask."""
    return {
        "image": np.multiply(batch["image"], np.float32(1 / 255), dtype=np.float32),
        "mask": batch["mask"].astype(np.float32),
        "skipped": batch["skipped"],
    }


def _init_worker(worker_index: int, worker_count: int) -> None:
    del worker_index, worker_count
    # One OpenCV thread per worker process: the workers already use every core.
    cv2.setNumThreads(1)


def _map_seed(seed: int) -> int:
    """The seed of the per-sample generators, distinct from the shuffle's."""
    return int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])


def record_order(num_records: int, *, seed: int) -> grain.MapDataset:
    """The endless stream of record indices all hosts share: every record once per shuffled pass.

    Grain's index shuffle costs about 30/n ms per element over n indices (5 ms for
    the six sample photos), so a source under 4,096 records is shuffled as several
    copies of its indices: one shuffled pass then visits each record ``copies``
    times.
    """
    dataset = grain.MapDataset.range(num_records)
    copies = math.ceil(_MIN_SHUFFLE_DOMAIN / num_records)
    if copies > 1:
        dataset = dataset.repeat(copies)
    return dataset.shuffle(seed=seed).repeat(None)


def train_mask_generator(data_config: ml_collections.ConfigDict) -> masks.MaskGenerator:
    """The training masks: preset ``data_config.mask`` with ``data_config.mask_overrides``."""
    return masks.get(data_config.mask, **_as_dict(data_config.mask_overrides))


def create_train_dataset(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                         process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The training ``grain.IterDataset`` (see the module docstring); iterate it for batches."""
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                         f"process_count {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    source = make_train_source(data_config)
    mask_generator = train_mask_generator(data_config)
    if mask_generator.needs_labels and not source.has_labels:
        raise ValueError(f"mask {data_config.mask!r} needs label maps, which {source.description} lacks; "
                         "set data_config.segm_dir (folder source) or use source='synthetic'")
    maker = TrainSampleMaker(source, transform=data_config.transform, crop_size=data_config.crop_size,
                             mask_generator=mask_generator,
                             max_bad_in_a_row=data_config.get("max_bad_in_a_row", DEFAULT_MAX_BAD_IN_A_ROW))
    dataset = record_order(len(source), seed=seed).random_map(maker, seed=_map_seed(seed))
    # Batch k of this host is rows [i*b, (i+1)*b) of global batch k (see the module docstring).
    per_host_batch = global_batch_size // process_count
    dataset = dataset.batch(per_host_batch)[process_index::process_count]
    # Read-ahead counts batches; Grain's default of 500 is far more than training needs.
    iter_dataset = dataset.to_iter_dataset(grain.ReadOptions(
        num_threads=data_config.get("read_threads", 2), prefetch_buffer_size=2))
    if data_config.num_workers > 0:
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=data_config.num_workers), worker_init_fn=_init_worker)
    return iter_dataset.map(to_float_batch)


def create_train_iterator(data_config: ml_collections.ConfigDict, *, global_batch_size: int, seed: int,
                          process_index: int = 0, process_count: int = 1) -> grain.DatasetIterator:
    """An endless iterator of this host's training batches.

    Yields ``{"image": float32 (B, H, W, 3) in [0, 1], "mask": float32 (B, H, W, 1)
    0/1 (1 = hole), "skipped": int32 (B,)}`` with B = global_batch_size //
    process_count. Supports ``get_state``/``set_state`` and
    ``grain.checkpoint.CheckpointSave/CheckpointRestore``; call ``close()`` when
    done if ``num_workers > 0``.
    """
    return iter(create_train_dataset(data_config, global_batch_size=global_batch_size, seed=seed,
                                     process_index=process_index, process_count=process_count))


def skipped_files_count(batch: dict[str, np.ndarray]) -> int:
    """Number of unreadable files stepped over while producing ``batch``."""
    return int(np.sum(batch["skipped"]))


# --- evaluation ----------------------------------------------------------------


def _read_eval_pair(record: dict[str, Any], size: int) -> tuple[np.ndarray, np.ndarray]:
    image = images.decode_image(record["image"], record["image_path"])
    mask = cv2.imdecode(np.frombuffer(record["mask"], np.uint8), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise images.UnreadableImageError(f"{record['mask_path']}: not a decodable mask PNG")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {record['mask_path']} is {mask.shape[1]}x{mask.shape[0]} but image "
                         f"{record['image_path']} is {image.shape[1]}x{image.shape[0]}")
    image = augment.eval_transform(image, size)
    mask = augment.eval_transform(mask, size, nearest=True)
    return image, (mask > 127).astype(np.float32)


def _sample_eval_examples(size: int, preset: str, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    generator = masks.get(preset)
    examples = []
    for path in samples.sample_photo_paths():
        image = images.decode_image(images.read_bytes(path), str(path))
        example = gen_masks.make_eval_example(gen_masks.image_rng(seed, path.name), image, generator, size)
        if example is None:
            logging.warning("No mask of preset %s under the area limit for sample %s; left out",
                            preset, path.name)
            continue
        examples.append((path.stem, example[0], (example[1] > 127).astype(np.float32)))
    return examples


class EvalBatches:
    """A finite, re-iterable, deterministic sequence of evaluation batches.

    Each batch: ``{"image": float32 (b, S, S, 3), "mask": float32 (b, S, S, 1),
    "name": list[str]}``; the last batch may be smaller. An unreadable file in an
    evaluation set raises (metrics over a partial set would not be comparable).
    """

    def __init__(self, data_config: ml_collections.ConfigDict, *, batch_size: int):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.size = data_config.eval_size
        self._folder = None
        self._examples = None
        if data_config.eval_dir:
            self._folder = sources.EvalFolderSource(data_config.eval_dir)
            self.num_examples = len(self._folder)
        else:
            self._examples = _sample_eval_examples(self.size, data_config.eval_mask,
                                                   data_config.get("eval_seed", 0))
            self.num_examples = len(self._examples)

    def __len__(self) -> int:
        return math.ceil(self.num_examples / self.batch_size)

    def _example(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        if self._examples is not None:
            return self._examples[index]
        record = self._folder[index]
        image, mask = _read_eval_pair(record, self.size)
        return record["name"], image, mask

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for start in range(0, self.num_examples, self.batch_size):
            stop = min(start + self.batch_size, self.num_examples)
            names, image_list, mask_list = zip(*(self._example(i) for i in range(start, stop)))
            yield {
                "image": np.stack(image_list).astype(np.float32) * np.float32(1 / 255),
                "mask": np.stack(mask_list)[..., None],
                "name": list(names),
            }


def create_eval_batches(data_config: ml_collections.ConfigDict, *, batch_size: int) -> EvalBatches:
    """Evaluation batches from ``data_config.eval_dir``, or the built-in samples with frozen masks."""
    return EvalBatches(data_config, batch_size=batch_size)
