"""Multi-scale refinement at 1024x1024: wall time and peak memory.

    python benchmarks/refinement.py --json                       # big-lama, 15 iterations per level
    python benchmarks/refinement.py --json --iters 2             # same memory, a fraction of the time
    python benchmarks/refinement.py --json --config configs/tiny.py

Batch 1, random weights (their values do not change the work), the reference
defaults (min side 512, so 1024² refines at 512² then 1024²). The input is a
built-in sample photo resized to --size with a centred box hole covering a
quarter of the image.

Reported:
* compile_s: compiling every level's program ahead of time (the jitted calls then reuse it);
* refine_1024_s: one `Refiner.run` after that, i.e. the optimisation itself (the key
  follows --size);
* peak_rss_mb: the process's peak resident memory (weights, compilation and the
  runs included): the CPU figure;
* levels: per level the XLA working memory of its compiled program (temp buffers;
  arguments are the weights, image, mask and reference): an estimate of what
  the same program needs on an accelerator;
* device_peak_mb: the accelerator's peak bytes in use, where the backend reports it (GPU/TPU).
The reference reports needing about 24 GB of GPU memory for big-lama refinement.
Memory does not depend on --iters (the iterations are a `lax.scan`); time is
about linear in it.
"""

import argparse
import json
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax.config_loader import load_config  # noqa: E402
from lama_jax.data.samples import sample_photo_paths  # noqa: E402
from lama_jax.models import build_generator  # noqa: E402
from lama_jax.refinement import RefinementOptions, Refiner, image_mask_pyramid  # noqa: E402


def _input(size):
    photo = Image.open(sample_photo_paths()[0]).convert("RGB").resize((size, size), Image.BILINEAR)
    image = np.asarray(photo, np.float32) / 255
    mask = np.zeros((size, size, 1), np.float32)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return image, mask


def _compile_levels(refiner, image, mask):
    """AOT-compiles each level's program; returns (seconds, [{"size", "temp_mb", "argument_mb"}])."""
    start = time.perf_counter()
    levels = []
    reference = None
    for level_image, level_mask in image_mask_pyramid(image[None], mask[None], refiner.options):
        args = (refiner.variables, level_image, level_mask)
        if reference is None:
            compiled = refiner._coarsest.lower(*args).compile()
        else:
            compiled = refiner._refine.lower(*args, reference).compile()
        reference = jax.ShapeDtypeStruct(level_image.shape, jnp.float32)
        memory = compiled.memory_analysis()
        levels.append(
            {
                "size": list(level_image.shape[1:3]),
                "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1),
                "argument_mb": round(memory.argument_size_in_bytes / 2**20, 1),
            }
        )
    return time.perf_counter() - start, levels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/big_lama.py")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=RefinementOptions.n_iters, help="per level")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    generator_config = load_config(args.config).model.generator
    generator = build_generator(generator_config)
    variables = jax.jit(lambda: generator.init(jax.random.key(0), jnp.zeros((1, 64, 64, 4)), train=False))()
    refiner = Refiner(generator, variables, RefinementOptions(n_iters=args.iters))
    image, mask = _input(args.size)

    compile_s, levels = _compile_levels(refiner, image, mask)
    start = time.perf_counter()
    refiner.run(image, mask)
    refine_s = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    results = {
        "device": jax.devices()[0].device_kind,
        "config": args.config,
        "size": args.size,
        "iters_per_level": args.iters,
        "compile_s": round(compile_s, 1),
        f"refine_{args.size}_s": round(refine_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "levels": levels,
    }
    if "peak_bytes_in_use" in stats:
        results["device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    if not args.json:
        print("reference: about 24 GB of GPU memory for big-lama refinement")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
