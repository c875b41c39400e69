"""The exported StableHLO artifact of a Big-LaMa generator: export cost, size, speed and agreement.

    python benchmarks/export.py --json

Random big-lama weights (the values do not change the work). Exports the
inpainting function with symbolic batch, height and width for --platforms,
serializes and deserializes it, then times one artifact at several sizes
against `Inpainter` (XLA's FFT) on the local device: batch 1, median of
--repeats runs after one warm-up (the first call of each size compiles).
"""

import argparse
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax import export  # noqa: E402
from lama_jax.config_loader import load_config  # noqa: E402
from lama_jax.inference import Inpainter  # noqa: E402
from lama_jax.models import build_generator  # noqa: E402


def median_ms(fn, *args, repeats):
    np.asarray(fn(*args))  # warm-up: compiles this size
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/big_lama.py")
    parser.add_argument("--sizes", default="256,512", help="square sides to time, comma-separated")
    parser.add_argument("--platforms", default="cpu,cuda,tpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    generator_config = load_config(args.config).model.generator.to_dict()
    generator = build_generator(generator_config)
    variables = jax.jit(lambda: generator.init(jax.random.key(0), jnp.zeros((1, 64, 64, 4)), train=False))()

    start = time.perf_counter()
    exported = export.export_stablehlo(generator_config, variables, platforms=args.platforms.split(","))
    serialized = exported.serialize()
    export_s = time.perf_counter() - start
    artifact = jax.export.deserialize(serialized).call
    inpainter = Inpainter(generator_config, variables)

    results = {"device": jax.devices()[0].device_kind, "platforms": list(exported.platforms),
               "export_s": round(export_s, 1), "artifact_mb": round(len(serialized) / 2**20, 1)}
    rng = np.random.default_rng(0)
    for side in (int(s) for s in args.sizes.split(",")):
        image = rng.uniform(size=(1, side, side, 3)).astype(np.float32)
        mask = np.zeros((1, side, side, 1), np.float32)
        mask[:, side // 4: side // 2, side // 8: side * 7 // 8] = 1
        results[f"artifact_{side}_ms"] = median_ms(artifact, image, mask, repeats=args.repeats)
        results[f"inpainter_{side}_ms"] = median_ms(inpainter, image, mask, repeats=args.repeats)
        difference = np.abs(np.asarray(artifact(image, mask)) - inpainter(image, mask)).max()
        results[f"max_abs_diff_{side}"] = float(difference)
    print(json.dumps(results) if args.json else json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
