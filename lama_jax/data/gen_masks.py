r"""Frozen evaluation sets: LaMa's ``bin/gen_mask_dataset.py`` with a seed.

For every image under ``--input`` (recursive, sorted) this writes LaMa's layout
(docs/parity.md, "Masks"):

* ``<relpath-without-ext>_crop000.png``: the image, shorter side resized to the
  output size (bicubic) and cropped square around the mask;
* ``<relpath-without-ext>_crop000_mask000.png``: the mask, 8-bit 0/255;

plus ``manifest.json`` with the SHA-256 of every written file. Per image,
``variants`` candidate masks are drawn on the resized (non-square) image, each
is square-cropped with LaMa's border rule, candidates covering more than
``max_tamper_area`` are dropped and one survivor is kept (an image with none
gets no files, as upstream). Unlike upstream every image has its own RNG,
seeded from ``--seed`` and the image's relative path, so the set is
byte-for-byte reproducible and adding images leaves the others unchanged.

  python -m lama_jax.data.gen_masks --input DIR --output DIR --preset thick_512 --seed 0
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from lama_jax import cli
from lama_jax.data import images
from lama_jax.data import masks
from lama_jax.data import sources

MANIFEST_NAME = "manifest.json"


def resize_for_masking(image: np.ndarray, out_size: int) -> np.ndarray:
    """PIL bicubic resize so that the shorter side is ``out_size`` (new side = round(side · factor))."""
    height, width = image.shape[:2]
    factor = out_size / min(height, width)
    new_size = (round(width * factor), round(height * factor))
    if new_size == (width, height):
        return image
    return np.asarray(Image.fromarray(image).resize(new_size, Image.BICUBIC))


def square_crop_start(rng: np.random.Generator, mask: np.ndarray, *, overlap: float = 1.0) -> int:
    """Start of LaMa's square crop along the longer axis, chosen around the mask's extent.

    With the mask's hole extent [a, b] along that axis and e = a + (b − a)·overlap,
    the start is uniform in [lo, hi) with lo = max(0, min(L − S − 1, e − S)) and
    hi = max(lo + 1, min(L − S, e)).
    """
    height, width = mask.shape
    long_axis_profile = (mask > 0.5).any(axis=1 if height >= width else 0)
    covered = np.flatnonzero(long_axis_profile)
    if covered.size == 0:
        raise ValueError("empty mask has no extent to crop around")
    side, length = min(height, width), max(height, width)
    a, b = int(covered[0]), int(covered[-1])
    e = int(a + (b - a) * overlap)
    lo = max(0, min(length - side - 1, e - side))
    hi = max(lo + 1, min(length - side, e))
    return int(rng.integers(lo, hi))


def make_eval_example(rng: np.random.Generator, image: np.ndarray, generator: masks.MaskGenerator,
                      out_size: int, *, variants: int = 5,
                      max_tamper_area: float = 0.5) -> tuple[np.ndarray, np.ndarray] | None:
    """One (image uint8 (S, S, 3), mask uint8 0/255 (S, S)) pair, or None when every candidate was dropped."""
    resized = resize_for_masking(image, out_size)
    height, width = resized.shape[:2]
    kept = []
    for _ in range(variants):
        mask = generator(rng, height, width)
        if height != width:
            try:
                start = square_crop_start(rng, mask)
            except ValueError:
                continue
            if height > width:
                crop = (slice(start, start + width), slice(None))
            else:
                crop = (slice(None), slice(start, start + height))
        else:
            crop = (slice(None), slice(None))
        cropped = mask[crop]
        if cropped.mean() > max_tamper_area:
            continue
        kept.append((resized[crop], cropped))
    if not kept:
        return None
    image_crop, mask_crop = kept[int(rng.choice(len(kept)))]
    return np.ascontiguousarray(image_crop), (mask_crop > 0.5).astype(np.uint8) * 255


def image_rng(seed: int, relpath: str) -> np.random.Generator:
    """An image's own generator: a function of the run seed and its relative path only."""
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], np.uint32).tolist()])


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def preset_out_size(preset: str) -> int | None:
    suffix = preset.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else None


def generate_mask_dataset(input_dir: str | pathlib.Path, output_dir: str | pathlib.Path, *,
                          preset: str, seed: int, out_size: int | None = None, variants: int = 5,
                          max_tamper_area: float = 0.5) -> dict[str, Any]:
    """Writes the frozen set and its manifest; returns the manifest."""
    input_dir, output_dir = pathlib.Path(input_dir), pathlib.Path(output_dir)
    out_size = out_size or preset_out_size(preset)
    if out_size is None:
        raise ValueError(f"preset {preset!r} has no size suffix; pass out_size (--out-size)")
    if out_size < 1 or variants < 1:
        raise ValueError(f"out_size and variants must be positive, got {out_size} and {variants}")
    generator = masks.get(preset)
    if generator.needs_labels:
        raise ValueError(f"preset {preset!r} needs label maps, which gen_masks does not read")
    folder = sources.ImageFolderSource(input_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    files, skipped, dropped = {}, {}, []
    for relpath in folder.relpaths:
        path = input_dir / relpath
        try:
            image = images.decode_image(images.read_bytes(path), str(path))
        except images.UnreadableImageError as e:
            logging.warning("gen_masks: skipping %s", e)
            skipped[relpath] = str(e)
            continue
        example = make_eval_example(image_rng(seed, relpath), image, generator, out_size,
                                    variants=variants, max_tamper_area=max_tamper_area)
        if example is None:
            dropped.append(relpath)
            continue
        stem = str(pathlib.PurePosixPath(relpath).with_suffix(""))
        image_out = output_dir / f"{stem}_crop000.png"
        mask_out = output_dir / f"{stem}_crop000_mask000.png"
        image_out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(example[0]).save(image_out, format="PNG")
        Image.fromarray(example[1]).save(mask_out, format="PNG")
        for written in (image_out, mask_out):
            files[written.relative_to(output_dir).as_posix()] = _sha256(written)
    if not files:
        raise ValueError(f"no evaluation example could be made from {input_dir} "
                           f"({len(skipped)} unreadable, {len(dropped)} without an acceptable mask)")
    manifest = {
        "preset": preset, "seed": seed, "out_size": out_size, "variants": variants,
        "max_tamper_area": max_tamper_area, "mask_kwargs": masks.preset_kwargs(preset),
        "files": dict(sorted(files.items())), "skipped": skipped, "no_acceptable_mask": dropped,
    }
    (output_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = cli.ArgumentParser(prog="python -m lama_jax.data.gen_masks",
                                description="Write a frozen LaMa-layout evaluation set (images and masks) "
                                            "from a folder of images.")
    parser.add_argument("--input", required=True, help="folder of images (recursive)")
    parser.add_argument("--output", required=True, help="folder to write the evaluation set into")
    parser.add_argument("--preset", default="thick_512", choices=masks.names(),
                        help="mask preset (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="default %(default)s")
    parser.add_argument("--out-size", type=int, default=None,
                        help="output side; defaults to the preset's suffix (256 or 512)")
    parser.add_argument("--variants", type=int, default=5, help="candidate masks per image (default %(default)s)")
    parser.add_argument("--max-tamper-area", type=float, default=0.5,
                        help="largest hole fraction a mask may cover (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        manifest = generate_mask_dataset(args.input, args.output, preset=args.preset, seed=args.seed,
                                         out_size=args.out_size, variants=args.variants,
                                         max_tamper_area=args.max_tamper_area)
    except (OSError, ValueError) as e:
        return cli.error(e)
    print(f"wrote {len(manifest['files']) // 2} image/mask pairs to {args.output} "
          f"({len(manifest['skipped'])} unreadable, {len(manifest['no_acceptable_mask'])} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
