"""Inpaints your photos, or LaMa-layout folders, with a model checkpoint (LaMa's `bin/predict.py`).

    python -m lama_jax.predict --checkpoint DIR --image photo.jpg --mask mask.png --output result.png
    python -m lama_jax.predict --checkpoint DIR --input DIR --output DIR [--refine] [--batch-size 8]

A mask is any image file of the photo's size whose non-zero pixels are the
hole (white on black, e.g. the demo's mask download or a painted PNG).

With --image/--mask, --output is the file to write (its extension, .png .jpg
.jpeg .webp or .bmp, picks the format) or a folder that receives
`<image name>.png`.

With --input (recursive, sorted), every jpg/jpeg/png/webp/bmp file whose name
contains `_mask` is a mask; its image is the file named as the mask cut at the
last `_mask`, with any of those extensions (.png first, as LaMa). Results keep
the subfolders under --output, always as PNG:

* `cat.jpg` + `cat_mask.png` (one mask per photo): named after the image, `cat.png`;
* LaMa's layout, `img1_crop000.png` + `img1_crop000_mask000.png` (several masks per
  image): named after the mask, `img1_crop000_mask000.png`,
  the layout `python -m lama_jax.evaluate --predictions` reads.

An --output with an image extension takes one result only.

Masks are binarised (> 0 is a hole); images are padded to a multiple of 8 and
the prediction is blended into the known pixels (`Inpainter`). Consecutive
samples of equal size run as one batch of --batch-size; the first batch of a
size compiles the model first (said on stderr). Results are saved as
`uint8(clip(x * 255, 0, 255))`: truncation, not rounding, as the reference
does. --refine runs LaMa's multi-scale feature refinement per image
(`lama_jax.refinement`; batch size 1, slow: 14 Adam steps per level).

A sample of a folder whose files are missing, unreadable, of mismatched sizes
or too small is reported on stderr by path and skipped; the others are still
processed. Exit status: 0 when every result was written, otherwise the number
of failed samples (at most 254); 255 when nothing could start (bad flags,
unusable checkpoint, no masks under --input), with one `error: ...` line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import sys
import time
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image

from lama_jax import cli

# Heavy modules (JAX, the models) are imported where they are used, after the arguments are parsed, so
# that --help and usage mistakes answer at once.

DEFAULT_BATCH_SIZE = 8
MAX_FAILURE_STATUS = 254
SETUP_ERROR_STATUS = 255
_PREFETCH_DEPTH = 4  # batches of decoded samples held ahead of the model
# Written here rather than read from lama_jax.refinement (which imports JAX) so that --help stays fast;
# tests/test_predict.py checks they are RefinementOptions' defaults.
REFINE_DEFAULTS = dict(n_iters=15, lr=0.002, min_side=512, max_scales=3, px_budget=1_800_000)
# What a folder's images and masks may be, in the order an image is looked for (LaMa's .png first);
# = lama_jax.data.images.IMAGE_EXTENSIONS, not imported because that module loads OpenCV.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
_LOSSY_QUALITY = 95


@dataclasses.dataclass(frozen=True)
class Failure:
    sample: str  # the mask path (the sample's name)
    reason: str


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 by truncation, as LaMa saves predictions."""
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def is_image_path(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def save_image(path: str, image: np.ndarray) -> None:
    """Writes [0, 1] floats in the format of the path's extension (JPEG and WebP at quality 95)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lossy = os.path.splitext(path)[1].lower() in (".jpg", ".jpeg", ".webp")
    Image.fromarray(to_uint8(image)).save(path, **({"quality": _LOSSY_QUALITY} if lossy else {}))


def load_pair(sample) -> tuple[np.ndarray, np.ndarray]:
    """(image (H,W,3), mask (H,W,1)) float32 in [0, 1] of an `evaluate.Sample`; errors name the offending file."""
    from lama_jax import evaluate
    from lama_jax.inference import MIN_SIDE

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
    inpainter,
    samples: Sequence,
    *,
    refiner=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = False,
    notify: Optional[Callable[[str], None]] = None,
) -> list[Failure]:
    """Inpaints every `evaluate.Sample` with an `Inpainter` and writes it to `sample.prediction`; returns the
    failures, in sample order.

    With `progress`, a progress bar runs and each failure is printed to stderr as it happens. `notify`
    receives a line before and after each compilation of the model for a new size.
    """
    import jax
    import tqdm

    from lama_jax import evaluate

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
                    images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
                    compiling = notify is not None and inpainter.will_compile(images.shape)
                    if compiling:
                        notify(f"compiling the model for {images.shape[1]}x{images.shape[2]} images, batch "
                               f"{batch_size} (once per size)...")
                    started = time.perf_counter()
                    outputs = inpainter(images, np.concatenate([masks, np.repeat(masks[-1:], pad, 0)]))
                    if compiling:
                        notify(f"compiled and inpainted in {time.perf_counter() - started:.1f} s")
            except (ValueError, jax.errors.JaxRuntimeError) as err:
                failures.extend(Failure(sample.mask, f"inference failed: {err}") for sample, _ in group)
            else:
                for (sample, _), output in zip(group, outputs):
                    writes.append((sample, pool.submit(save_image, sample.prediction, output)))
            report()
        for sample, write in writes:
            try:
                write.result()
            except (OSError, ValueError) as err:
                failures.append(Failure(sample.mask, f"cannot write {sample.prediction!r}: {err}"))
        report()
    return sorted(failures, key=lambda failure: order[failure.sample])


def list_folder(input_dir: str, output_dir: str) -> list:
    """The `evaluate.Sample`s of a folder (see the module docstring), sorted by mask path, unchecked."""
    from lama_jax import evaluate

    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f"--input {input_dir!r} is not a folder")
    samples = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        names = [f for f in files if not f.startswith(".") and is_image_path(f)]
        photos: dict[str, list[str]] = {}
        for name in names:
            stem = os.path.splitext(name)[0]
            if "_mask" not in stem:
                photos.setdefault(stem, []).append(name)
        for name in names:
            stem = os.path.splitext(name)[0]
            if "_mask" not in stem:
                continue
            base = stem.rsplit("_mask", 1)[0]
            found = sorted(photos.get(base, []), key=lambda f: IMAGE_EXTENSIONS.index(os.path.splitext(f)[1].lower()))
            mask = os.path.join(folder, name)
            samples.append(evaluate.Sample(
                mask=mask,
                image=os.path.join(folder, found[0] if found else base + ".png"),
                prediction=os.path.join(output_dir, evaluate.prediction_relpath(os.path.relpath(mask, input_dir)))))
    if not samples:
        raise FileNotFoundError(
            f"no masks under --input {input_dir!r}: name each mask after its image, e.g. cat.jpg + cat_mask.png "
            "(or LaMa's img_mask000.png)")
    return sorted(samples, key=lambda sample: sample.mask)


def predict_folder(inpainter, input_dir: str, output_dir: str, **kwargs) -> tuple[list, list[Failure]]:
    """Inpaints a folder (see the module docstring) into `output_dir`; returns (samples, failures). See
    `predict_samples`."""
    samples = list_folder(input_dir, output_dir)
    return samples, predict_samples(inpainter, samples, **kwargs)


def _single_sample(image: str, mask: str, output: str):
    from lama_jax import evaluate

    for flag, path in (("--image", image), ("--mask", mask)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{flag} {path!r} does not exist")
    if not is_image_path(output):
        output = os.path.join(output, os.path.splitext(os.path.basename(image))[0] + ".png")
    return evaluate.Sample(mask=mask, image=image, prediction=output)


def check_outputs(samples: Sequence, output: str) -> None:
    """ValueError unless every sample writes its own file and none overwrites an input."""
    if is_image_path(output) and len(samples) > 1:
        raise ValueError(f"--output {output!r} is one image file, but there are {len(samples)} samples; "
                         "give a folder")
    inputs = {os.path.realpath(path) for sample in samples for path in (sample.image, sample.mask)}
    written: dict[str, str] = {}
    for sample in samples:
        target = os.path.realpath(sample.prediction)
        if target in inputs:
            raise ValueError(f"the result for {sample.mask!r} would overwrite the input {sample.prediction!r}; "
                             "choose another --output")
        if target in written:
            raise ValueError(f"masks {written[target]!r} and {sample.mask!r} would both write "
                             f"{sample.prediction!r}; rename one")
        written[target] = sample.mask


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(
        prog="python -m lama_jax.predict",
        description="Inpaint a photo, or a folder of photos and masks, with a lama_jax model checkpoint.",
        epilog=f"Exit status: 0 when all results were written, else the number of failed samples "
        f"(at most {MAX_FAILURE_STATUS}); {SETUP_ERROR_STATUS} when the run could not start.",
    )
    parser.add_argument("--checkpoint", required=True, help="model checkpoint folder (convert/export output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="folder of images and masks: cat.jpg + cat_mask.png, or LaMa's layout")
    source.add_argument("--image", help="one photo (jpg, png, webp, bmp; needs --mask)")
    parser.add_argument("--mask", help="the mask for --image, same size: > 0 (white) is the hole")
    parser.add_argument("--output", required=True,
                        help="output folder, or the image file to write (.png, .jpg, .webp, .bmp) for one result")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="default %(default)s")
    parser.add_argument("--refine", action="store_true", help="multi-scale feature refinement (slow)")
    parser.add_argument("--refine-iters", type=int, default=REFINE_DEFAULTS["n_iters"],
                        help="iterations per level (default %(default)s)")
    parser.add_argument("--refine-lr", type=float, default=REFINE_DEFAULTS["lr"],
                        help="Adam learning rate (default %(default)s)")
    parser.add_argument("--refine-min-side", type=int, default=REFINE_DEFAULTS["min_side"],
                        help="short side that sets the number of levels (default %(default)s)")
    parser.add_argument("--refine-max-scales", type=int, default=REFINE_DEFAULTS["max_scales"],
                        help="most levels (default %(default)s)")
    parser.add_argument("--refine-px-budget", type=int, default=REFINE_DEFAULTS["px_budget"],
                        help="larger images are downscaled to this many pixels first (default %(default)s)")
    cli.add_compilation_cache_flag(parser)
    args = parser.parse_args(argv)
    if args.image is not None and args.mask is None:
        parser.error("--image needs --mask")
    if args.input is not None and args.mask is not None:
        parser.error("--mask goes with --image; with --input the masks are the folder's *_mask* files")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parse_args(argv)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (already printed)
        return SETUP_ERROR_STATUS if exit_request.code else 0
    try:
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        if args.input is not None:
            samples = list_folder(args.input, args.output)
            if is_image_path(args.output) and len(samples) == 1:  # a folder of one photo, into one file
                samples = [dataclasses.replace(samples[0], prediction=args.output)]
        else:
            samples = [_single_sample(args.image, args.mask, args.output)]
        check_outputs(samples, args.output)
        from lama_jax import compilation_cache

        compilation_cache.enable(args.compilation_cache_dir)
        from lama_jax.inference import Inpainter
        from lama_jax.refinement import RefinementOptions, Refiner

        refine_options = RefinementOptions(
            n_iters=args.refine_iters,
            lr=args.refine_lr,
            min_side=args.refine_min_side,
            max_scales=args.refine_max_scales,
            px_budget=args.refine_px_budget,
        )
        inpainter = Inpainter.from_checkpoint(args.checkpoint)
    except (OSError, ValueError) as err:
        return cli.error(err, SETUP_ERROR_STATUS)
    refiner = Refiner.from_inpainter(inpainter, refine_options) if args.refine else None
    single = args.input is None

    def notify(line: str) -> None:
        import tqdm

        tqdm.tqdm.write(line, file=sys.stderr)

    # One photo gets no progress bar, and its failure is the run's one error line.
    # Short batches are padded to the batch size: no larger than the samples there are.
    failures = predict_samples(inpainter, samples, refiner=refiner, batch_size=min(args.batch_size, len(samples)),
                               progress=not single, notify=notify)
    if single and failures:
        return cli.error(failures[0].reason)
    written = samples[0].prediction if single else args.output
    print(f"wrote {len(samples) - len(failures)} of {len(samples)} results to {written}")
    if failures:
        print(f"{len(failures)} of {len(samples)} samples failed (reasons above)", file=sys.stderr)
    return min(len(failures), MAX_FAILURE_STATUS)


if __name__ == "__main__":
    sys.exit(main())
