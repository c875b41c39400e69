"""Big-LaMa generator speed: eval forward at 256² and 512², train-mode forward+backward at 256².

    python benchmarks/generator.py --json

Batch 1, random weights (the values do not change the work), median of
--repeats runs after one warm-up. For the same figures beside upstream PyTorch
LaMa, in one run on this machine, use benchmarks/compare_pytorch.py.
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
from lama_jax.config_loader import load_config  # noqa: E402
from lama_jax.models import build_generator  # noqa: E402

GFLOP_PER_256_FORWARD = 110.1  # the convolutions of one 256² forward


def median_ms(fn, *args, repeats):
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/big_lama.py")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args(argv)

    generator = build_generator(load_config(args.config).model.generator, dtype=args.dtype)
    rng = np.random.default_rng(0)

    def inputs(size):
        return jnp.asarray(rng.uniform(size=(1, size, size, 4)).astype(np.float32))

    x256 = inputs(256)
    variables = jax.jit(lambda: generator.init(jax.random.key(0), x256, train=False))()
    start = time.perf_counter()
    eval_fn = jax.jit(lambda v, x: generator.apply(v, x, train=False))
    compiled = eval_fn.lower(variables, x256).compile()
    compile_s = time.perf_counter() - start
    del compiled

    def loss(params, batch_stats, x):
        out, _ = generator.apply({"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"])
        return out.mean()

    grad_fn = jax.jit(jax.grad(loss))
    results = {
        "device": jax.devices()[0].device_kind,
        "dtype": args.dtype,
        "compile_s": round(compile_s, 2),
        "eval_256_ms": median_ms(eval_fn, variables, x256, repeats=args.repeats),
        "eval_512_ms": median_ms(eval_fn, variables, inputs(512), repeats=args.repeats),
        "fwd_bwd_256_ms": median_ms(grad_fn, variables["params"], variables["batch_stats"], x256,
                                    repeats=args.repeats),
    }
    results["gflops_per_s"] = round(GFLOP_PER_256_FORWARD / (results["eval_256_ms"] / 1e3), 1)
    for key in ("eval_256_ms", "eval_512_ms", "fwd_bwd_256_ms"):
        results[key] = round(results[key], 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
