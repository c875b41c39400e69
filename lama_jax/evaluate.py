"""Scores saved inpainting results against ground truth with LaMa's evaluation protocol.

    python -m lama_jax.evaluate --data DIR --predictions DIR --output report.json \\
        [--lpips-weights vgg.pth --vgg-weights vgg16-397923af.pth] \\
        [--inception-weights pt_inception-2015-12-05-6726825d.pth] [--metrics ssim,psnr,l1,lpips,fid]

Without --metrics it computes what it can with what it was given: SSIM, PSNR
and L1 always, LPIPS with the LPIPS weights, FID with the Inception weights;
it says which it skipped and the flags that enable them. An explicit --metrics
naming a network metric whose weights are missing is an error.

Folder layout (LaMa's `bin/evaluate_predicts.py` with the eval2 configs):
every `*mask*.png` under --data (recursive, sorted) is a sample; its image is the
mask path cut at the last "_mask" plus ".png", and its prediction is the mask
path relative to --data, under --predictions, with suffix ".png" (the names
LaMa's predict writes), except that a mask named `<image>_mask.png` has its
prediction named after the image, `<image>.png` (as `lama_jax.predict` writes). Images are RGB, masks grayscale, both divided by 255;
the mask area (its mean) picks one of ten bins with the offline rule.

Before any image is scored every sample's files are checked; if any image or
prediction is missing, the run stops with an error giving the count and the
first paths. Weights files are checked first of all, and a missing one is named
together with the address to download it from; nothing is downloaded.

Writes the JSON report (non-finite values as null) and, next to it, a TSV with
LaMa's table shape; prints the throughput in images/s.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import jax
import numpy as np
import tqdm
from PIL import Image

from lama_jax import cli
from lama_jax import compilation_cache
from lama_jax import eval_weights
from lama_jax import metrics as metrics_lib
from lama_jax import torch_pickle
from lama_jax.data import sources
from lama_jax.models import inception as inception_lib
from lama_jax.models import lpips as lpips_lib

IMAGE_SUFFIX = ".png"
PREDICTION_SUFFIX = ".png"
DEFAULT_BATCH_SIZE = 8  # LaMa's eval2 configs
_MAX_LISTED = 10
T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class Sample:
    mask: str
    image: str
    prediction: str


def prediction_relpath(mask_relpath: str) -> str:
    """The prediction's path relative to the predictions folder: the mask's (LaMa's `x_mask000.png`), or the
    image's when the mask is `<image>_mask.<ext>` (one mask per photo, so the result is the photo's)."""
    stem = os.path.splitext(mask_relpath)[0]
    return stem.removesuffix("_mask") + PREDICTION_SUFFIX


def list_samples(data_dir: str, predictions_dir: str) -> list[Sample]:
    """Every `*mask*.png` under data_dir (recursive, sorted) with its image and prediction paths, unchecked."""
    samples = []
    for mask in sources.list_eval_masks(data_dir, IMAGE_SUFFIX):
        relative = os.path.relpath(mask, data_dir)
        samples.append(
            Sample(
                mask=mask,
                image=str(sources.mask_image_path(mask, IMAGE_SUFFIX)),
                prediction=os.path.join(predictions_dir, prediction_relpath(relative)),
            )
        )
    return samples


def find_samples(data_dir: str, predictions_dir: str) -> list[Sample]:
    """Pairs each mask with its image and prediction; raises if any file is missing."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data {data_dir!r} is not a directory")
    if not os.path.isdir(predictions_dir):
        raise FileNotFoundError(f"--predictions {predictions_dir!r} is not a directory")
    samples = list_samples(data_dir, predictions_dir)
    for kind in ("image", "prediction"):
        missing = [getattr(s, kind) for s in samples if not os.path.isfile(getattr(s, kind))]
        if missing:
            listed = ", ".join(missing[:_MAX_LISTED]) + (", ..." if len(missing) > _MAX_LISTED else "")
            raise FileNotFoundError(f"{len(missing)} of {len(samples)} {kind} files are missing: {listed}")
    return samples


def read_image(path: str, mode: str) -> np.ndarray:
    """Any image file PIL reads as float32 in [0, 1]: (H, W, 3) for mode "RGB", (H, W) for "L"."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode), dtype=np.float32) / 255.0
    except OSError as err:
        raise OSError(f"cannot read {path!r}: {err}") from err


def load_sample(sample: Sample) -> dict[str, np.ndarray]:
    """{"image", "inpainted"}: (H, W, 3) and "mask": (H, W, 1), float32 in [0, 1]."""
    image = read_image(sample.image, "RGB")
    mask = read_image(sample.mask, "L")[..., None]
    inpainted = read_image(sample.prediction, "RGB")
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"mask {sample.mask!r} is {mask.shape[:2]} but image {sample.image!r} is {image.shape[:2]}")
    if inpainted.shape != image.shape:
        raise ValueError(
            f"prediction {sample.prediction!r} is {inpainted.shape[:2]} but image {sample.image!r} is {image.shape[:2]}"
        )
    return {"image": image, "mask": mask, "inpainted": inpainted}


def prefetch_in_order(pool: concurrent.futures.Executor, load: Callable[[T], R], items: Iterable[T],
                      depth: int) -> Iterator[R]:
    """`load(item)` for each item, in order, run on `pool` at most `depth` items ahead.

    Decoding PNGs releases the GIL, so two threads overlap reading with the model.
    """
    pending: collections.deque = collections.deque()
    for item in items:
        pending.append(pool.submit(load, item))
        if len(pending) >= depth:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _batches(samples: Sequence[Sample], batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Consecutive equal-size samples stacked and padded to `batch_size` (one compiled shape per image size)."""
    group: list[dict[str, np.ndarray]] = []

    def flush():
        num_valid = len(group)
        rows = group + [group[-1]] * (batch_size - num_valid)
        return {key: np.stack([row[key] for row in rows]) for key in group[0]}, num_valid

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        for loaded in prefetch_in_order(pool, load_sample, samples, depth=2 * batch_size):
            if group and (loaded["image"].shape != group[0]["image"].shape or len(group) == batch_size):
                yield flush()
                group = []
            group.append(loaded)
    if group:
        yield flush()


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(m.strip() for m in spec.split(",") if m.strip()) if isinstance(spec, str) else tuple(spec)
    unknown = [m for m in names if m not in metrics_lib.ALL_METRICS]
    if unknown or not names:
        raise ValueError(f"unknown metrics {unknown or names!r}; choose from {','.join(metrics_lib.ALL_METRICS)}")
    return names


def available_metrics(lpips_weights: str | None = None, vgg_weights: str | None = None,
                      inception_weights: str | None = None) -> tuple[tuple[str, ...], dict[str, str]]:
    """(metrics computable with the weights given, {skipped metric: why, and the flags that enable it}).

    A network metric counts as asked for once any of its weights flags is given; a missing file is then
    reported when the weights are loaded.
    """
    metrics, skipped = list(metrics_lib.PAIRWISE_METRICS), {}
    if lpips_weights or vgg_weights:
        metrics.append("lpips")
    else:
        skipped["lpips"] = (f"needs {eval_weights.LPIPS_HEADS.flag} {eval_weights.LPIPS_HEADS.filename} "
                            f"({eval_weights.LPIPS_HEADS.url}) and {eval_weights.VGG16_IMAGENET.flag} "
                            f"{eval_weights.VGG16_IMAGENET.filename} ({eval_weights.VGG16_IMAGENET.url})")
    if inception_weights:
        metrics.append("fid")
    else:
        skipped["fid"] = (f"needs {eval_weights.FID_INCEPTION.flag} {eval_weights.FID_INCEPTION.filename} "
                          f"({eval_weights.FID_INCEPTION.url})")
    return tuple(metrics), skipped


def build_evaluator(
    metrics: Sequence[str] = metrics_lib.PAIRWISE_METRICS,
    *,
    lpips_weights: str | None = None,
    vgg_weights: str | None = None,
    inception_weights: str | None = None,
    lpips_variables=None,
    inception_variables=None,
    bin_mode: str = "offline",
) -> metrics_lib.InpaintingEvaluator:
    """An evaluator with LPIPS/Inception loaded from the official files (or given variables).

    The train loop calls this once with bin_mode="online" (LaMa's training-time
    binning) and feeds it validation batches.
    """
    metrics = parse_metrics(metrics)
    lpips_fn = fid_features_fn = None
    if "lpips" in metrics:
        if lpips_variables is None:
            lpips_variables = eval_weights.load_lpips_variables(lpips_weights, vgg_weights)
        # Variables stay arguments of the compiled function rather than baked-in constants.
        lpips_fn = functools.partial(jax.jit(lpips_lib.lpips_distance), lpips_variables)
    if "fid" in metrics:
        if inception_variables is None:
            inception_variables = eval_weights.load_inception_variables(inception_weights)
        fid_features_fn = functools.partial(jax.jit(inception_lib.inception_features), inception_variables)
    return metrics_lib.InpaintingEvaluator(
        metrics, lpips_fn=lpips_fn, fid_features_fn=fid_features_fn, bin_mode=bin_mode
    )


def evaluate_folders(
    data_dir: str,
    predictions_dir: str,
    metrics: Sequence[str] | None = None,
    *,
    lpips_weights: str | None = None,
    vgg_weights: str | None = None,
    inception_weights: str | None = None,
    lpips_variables=None,
    inception_variables=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> dict:
    """Scores a LaMa-layout folder of predictions; returns the report dict (see `InpaintingEvaluator.result`).

    `metrics=None` computes those the given weights allow (`available_metrics`). The report also holds
    "images_per_s", measured from the first image read to the finished report (weights loading and the
    sample search excluded).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if metrics is None:
        metrics = available_metrics(lpips_weights, vgg_weights, inception_weights)[0]
    evaluator = build_evaluator(
        metrics,
        lpips_weights=lpips_weights,
        vgg_weights=vgg_weights,
        inception_weights=inception_weights,
        lpips_variables=lpips_variables,
        inception_variables=inception_variables,
    )
    samples = find_samples(data_dir, predictions_dir)
    start = time.perf_counter()
    with tqdm.tqdm(total=len(samples), unit="img", disable=not progress) as bar:
        for batch, num_valid in _batches(samples, batch_size):
            evaluator.update(batch, num_valid=num_valid)
            bar.update(num_valid)
    report = evaluator.result()
    report["images_per_s"] = len(samples) / (time.perf_counter() - start)
    return report


def _json_safe(value):
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_report(report: dict, json_path: str) -> str:
    """Writes the JSON report and LaMa's TSV table (same path, suffix .tsv); returns the TSV path."""
    directory = os.path.dirname(os.path.abspath(json_path))
    os.makedirs(directory, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(_json_safe(report), f, indent=2, allow_nan=False)
        f.write("\n")
    tsv_path = os.path.splitext(json_path)[0] + ".tsv"
    with open(tsv_path, "w") as f:
        f.write(metrics_lib.report_to_tsv(report))
    return tsv_path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m lama_jax.evaluate",
        description="Score inpainted predictions with LaMa's metrics (SSIM, PSNR, L1, LPIPS, FID).",
    )
    parser.add_argument("--data", required=True, help="folder with images and *mask*.png files")
    parser.add_argument("--predictions", required=True, help="folder with predictions named after the masks")
    parser.add_argument("--output", required=True, help="report JSON path; the TSV table goes next to it")
    parser.add_argument(
        "--metrics",
        help=f"comma-separated subset of {','.join(metrics_lib.ALL_METRICS)} (default: ssim, psnr and l1, plus "
        "lpips and fid when their weights are given)",
    )
    parser.add_argument("--lpips-weights", help=f"LPIPS v0.1 heads, {eval_weights.LPIPS_HEADS.filename}")
    parser.add_argument("--vgg-weights", help=f"torchvision VGG16, {eval_weights.VGG16_IMAGENET.filename}")
    parser.add_argument("--inception-weights", help=f"FID Inception, {eval_weights.FID_INCEPTION.filename}")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="default %(default)s")
    cli.add_compilation_cache_flag(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    compilation_cache.enable(args.compilation_cache_dir)
    try:
        if args.metrics is None:
            metrics, skipped = available_metrics(args.lpips_weights, args.vgg_weights, args.inception_weights)
            for name, reason in skipped.items():
                print(f"skipping {name}: it {reason}", file=sys.stderr)
        else:
            metrics = parse_metrics(args.metrics)
        report = evaluate_folders(
            args.data,
            args.predictions,
            metrics,
            lpips_weights=args.lpips_weights,
            vgg_weights=args.vgg_weights,
            inception_weights=args.inception_weights,
            batch_size=args.batch_size,
            progress=True,
        )
    except (
        OSError,
        ValueError,
        torch_pickle.CheckpointFormatError,
        torch_pickle.UnsafeCheckpointError,
    ) as err:
        return cli.error(err)
    tsv_path = write_report(report, args.output)
    print(metrics_lib.report_to_tsv(report), end="")
    print(
        f"{report['num_images']['total']} images at {report['images_per_s']:.2f} images/s; "
        f"wrote {args.output} and {tsv_path}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
