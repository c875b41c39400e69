"""Inpaints LaMa-layout folders, or one image, with a model checkpoint (LaMa's `bin/predict.py`).

    python -m lama_jax.predict --checkpoint DIR --input DIR --output DIR [--refine] [--batch-size 8]
    python -m lama_jax.predict --checkpoint DIR --image photo.jpg --mask hole.png --output result.png

Folder layout (LaMa's evaluation folders): every `*mask*.png` under --input (recursive,
sorted) is a sample; its image is the mask path cut at the last "_mask" plus
".png". The result goes to --output plus the mask's path relative to --input,
with suffix ".png" (e.g. `img1_crop000_mask000.png`), which is the layout
`python -m lama_jax.evaluate --predictions` reads. With --image/--mask,
--output is the PNG to write (or a folder that receives the mask's name).

Masks are binarised (> 0 is a hole); images are padded to a multiple of 8 and
the prediction is blended into the known pixels (`Inpainter`). Consecutive
samples of equal size run as one batch of --batch-size. Results are saved as
`uint8(clip(x * 255, 0, 255))`: truncation, not rounding, as the reference
does. --refine runs LaMa's multi-scale feature refinement per image
(`lama_jax.refinement`; batch size 1, slow: 14 Adam steps per level).

A sample whose files are missing, unreadable, of mismatched sizes or too small
is reported on stderr by path and skipped; the others are still processed.
Exit status: 0 when every result was written, otherwise the number of failed
samples (at most 254); 255 when nothing could start (bad flags, unusable
checkpoint, no masks under --input).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
from typing import Iterator, Optional, Sequence

import jax
import numpy as np
import tqdm
from PIL import Image

from lama_jax import evaluate
from lama_jax.inference import MIN_SIDE, Inpainter
from lama_jax.refinement import RefinementOptions, Refiner

DEFAULT_BATCH_SIZE = 8
MAX_FAILURE_STATUS = 254
SETUP_ERROR_STATUS = 255
_PREFETCH_DEPTH = 4  # batches of decoded samples held ahead of the model


@dataclasses.dataclass(frozen=True)
class Failure:
    sample: str  # the mask path (the sample's name)
    reason: str


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 by truncation, as LaMa saves predictions."""
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def save_png(path: str, image: np.ndarray) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path, format="PNG")


def load_pair(sample: evaluate.Sample) -> tuple[np.ndarray, np.ndarray]:
    """(image (H,W,3), mask (H,W,1)) float32 in [0, 1]; errors name the offending file."""
    if not os.path.isfile(sample.image):
        raise FileNotFoundError(f"image {sample.image!r} for mask {sample.mask!r} does not exist")
    image = evaluate.read_image(sample.image, "RGB")
    mask = evaluate.read_image(sample.mask, "L")[..., None]
    if mask.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"mask {sample.mask!r} is {mask.shape[0]}x{mask.shape[1]} "
            f"but image {sample.image!r} is {image.shape[0]}x{image.shape[1]}"
        )
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(f"image {sample.image!r} is {image.shape[0]}x{image.shape[1]}; sides of {MIN_SIDE}+ needed")
    return image, mask


def _load_or_fail(sample):
    try:
        return sample, load_pair(sample), None
    except (OSError, ValueError) as err:
        return sample, None, str(err)


def _batches(loaded, batch_size: int, failures: list) -> Iterator[list]:
    """Groups consecutive successfully loaded samples of one size into lists of at most batch_size."""
    group: list = []
    for sample, pair, error in loaded:
        if error is not None:
            failures.append(Failure(sample.mask, error))
            continue
        if group and (pair[0].shape != group[0][1][0].shape or len(group) == batch_size):
            yield group
            group = []
        group.append((sample, pair))
    if group:
        yield group


def predict_samples(
    inpainter: Inpainter,
    samples: Sequence[evaluate.Sample],
    *,
    refiner: Optional[Refiner] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> list[Failure]:
    """Inpaints every sample and writes it to `sample.prediction`; returns the failures, in sample order.

    With `progress`, a progress bar runs and each failure is printed to stderr as it happens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if refiner is not None:
        batch_size = 1  # refinement optimises one image at a time
    failures: list[Failure] = []
    order = {sample.mask: i for i, sample in enumerate(samples)}
    with tqdm.tqdm(total=len(samples), unit="img", disable=not progress) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        writes = []
        reported = 0

        def report():
            nonlocal reported
            for failure in failures[reported:] if progress else ():
                tqdm.tqdm.write(f"failed: {failure.sample}: {failure.reason}", file=sys.stderr)
            reported = len(failures)
            bar.update(min(len(writes) + len(failures), len(samples)) - bar.n)

        loaded = evaluate.prefetch_in_order(pool, _load_or_fail, samples, depth=_PREFETCH_DEPTH * batch_size)
        for group in _batches(loaded, batch_size, failures):
            images = np.stack([pair[0] for _, pair in group])
            masks = np.stack([pair[1] for _, pair in group])
            try:
                if refiner is not None:
                    outputs = refiner(images, masks)[None]
                else:
                    # Padding a short batch with copies keeps one compiled shape per image size.
                    pad = batch_size - len(group)
                    outputs = inpainter(
                        np.concatenate([images, np.repeat(images[-1:], pad, 0)]),
                        np.concatenate([masks, np.repeat(masks[-1:], pad, 0)]),
                    )
            except (ValueError, jax.errors.JaxRuntimeError) as err:
                failures.extend(Failure(sample.mask, f"inference failed: {err}") for sample, _ in group)
            else:
                for (sample, _), output in zip(group, outputs):
                    writes.append((sample, pool.submit(save_png, sample.prediction, output)))
            report()
        for sample, write in writes:
            try:
                write.result()
            except (OSError, ValueError) as err:
                failures.append(Failure(sample.mask, f"cannot write {sample.prediction!r}: {err}"))
        report()
    return sorted(failures, key=lambda failure: order[failure.sample])


def predict_folder(
    inpainter: Inpainter, input_dir: str, output_dir: str, **kwargs
) -> tuple[list[evaluate.Sample], list[Failure]]:
    """Inpaints a LaMa-layout folder into `output_dir`; returns (samples, failures). See `predict_samples`."""
    samples = evaluate.list_samples(input_dir, output_dir)
    return samples, predict_samples(inpainter, samples, **kwargs)


def _single_sample(image: str, mask: str, output: str) -> evaluate.Sample:
    if not output.lower().endswith(".png"):
        output = os.path.join(output, os.path.splitext(os.path.basename(mask))[0] + ".png")
    return evaluate.Sample(mask=mask, image=image, prediction=output)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = RefinementOptions()
    parser = argparse.ArgumentParser(
        prog="python -m lama_jax.predict",
        description="Inpaint images with a lama_jax model checkpoint (LaMa's predict, optionally refined).",
        epilog=f"Exit status: 0 when all results were written, else the number of failed samples "
        f"(at most {MAX_FAILURE_STATUS}); {SETUP_ERROR_STATUS} when the run could not start.",
    )
    parser.add_argument("--checkpoint", required=True, help="model checkpoint folder (convert/export output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="LaMa-layout folder: images and their *mask*.png files")
    source.add_argument("--image", help="one image file (needs --mask)")
    parser.add_argument("--mask", help="the mask for --image: grayscale, > 0 is a hole")
    parser.add_argument("--output", required=True, help="output folder, or the .png to write with --image")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--refine", action="store_true", help="multi-scale feature refinement (slow)")
    parser.add_argument("--refine-iters", type=int, default=defaults.n_iters, help="per level (default %(default)s)")
    parser.add_argument("--refine-lr", type=float, default=defaults.lr, help="Adam (default %(default)s)")
    parser.add_argument("--refine-min-side", type=int, default=defaults.min_side, help="default %(default)s")
    parser.add_argument("--refine-max-scales", type=int, default=defaults.max_scales, help="default %(default)s")
    parser.add_argument("--refine-px-budget", type=int, default=defaults.px_budget, help="default %(default)s")
    args = parser.parse_args(argv)
    if args.image is not None and args.mask is None:
        parser.error("--image needs --mask")
    if args.input is not None and args.mask is not None:
        parser.error("--mask goes with --image; with --input the masks are the folder's *mask*.png files")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (already printed)
        return SETUP_ERROR_STATUS if exit_request.code else 0
    try:
        if args.input is not None:
            samples = evaluate.list_samples(args.input, args.output)
        else:
            samples = [_single_sample(args.image, args.mask, args.output)]
        refine_options = RefinementOptions(
            n_iters=args.refine_iters,
            lr=args.refine_lr,
            min_side=args.refine_min_side,
            max_scales=args.refine_max_scales,
            px_budget=args.refine_px_budget,
        )
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        inpainter = Inpainter.from_checkpoint(args.checkpoint)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return SETUP_ERROR_STATUS
    refiner = Refiner.from_inpainter(inpainter, refine_options) if args.refine else None
    failures = predict_samples(inpainter, samples, refiner=refiner, batch_size=args.batch_size, progress=True)
    print(f"wrote {len(samples) - len(failures)} of {len(samples)} results to {args.output}")
    if failures:
        print(f"{len(failures)} of {len(samples)} samples failed (reasons above)", file=sys.stderr)
    return min(len(failures), MAX_FAILURE_STATUS)


if __name__ == "__main__":
    sys.exit(main())
