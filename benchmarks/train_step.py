"""Speed of one full big-lama training iteration (G step + D step, every loss including HRF).

    python benchmarks/train_step.py --json

Random weights, a random 256x256 image batch and a LaMa-like mask; the work per
step does not depend on the values. Figures (medians over --repeats timed steps
after one warm-up step):

* step_s, step_s_batch4: seconds per iteration at batch 1 and 4 on the default
  backend, reference step order (G re-run for the D step);
* step_s_fused: batch 1 with `train.step_mode = "fused"` (one G forward less);
* step_cpu_s*: the same steps in process CPU seconds; on a shared machine
  wall time grows with other jobs' load (load_average_before/after), CPU time
  much less (ideally step_cpu_s / step_s = the cores XLA keeps busy);
* compile_s: lowering + compilation of the batch-1 step;
* gflop_per_step: XLA's FLOP count of the batch-1 step, and achieved_gflop_s;
* peak_rss_mb: peak resident memory of this process.

With a GPU present (or --gpu-batch given) it also reports images per second at
--gpu-batch (default 16) in float32 and bfloat16 (gpu_fp32_img_s,
gpu_bf16_img_s) and the model FLOP utilisation of both (mfu_fp32, mfu_bf16)
against the device's dense peak (`--peak-tflops` overrides the table).

The same step beside upstream PyTorch LaMa's, in one run on this machine:
benchmarks/compare_pytorch.py.
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from lama_jax import train_step  # noqa: E402
from lama_jax.configs import big_lama  # noqa: E402

# Dense tensor-core peak TFLOP/s per compute dtype (vendor datasheets, SXM parts). JAX runs float32
# convolutions and matmuls on GPU as TF32 at its default precision, hence the TF32 peak for float32.
PEAK_TFLOPS = {
    "H200": {"float32": 494.7, "bfloat16": 989.4},
    "H100": {"float32": 494.7, "bfloat16": 989.4},
    "A100": {"float32": 156.0, "bfloat16": 312.0},
}


def make_batch(batch_size: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    image = rng.random((batch_size, size, size, 3), dtype=np.float32)
    # A centred box hole plus random pixels: about a third of the image is missing.
    mask = np.zeros((batch_size, size, size, 1), np.float32)
    mask[:, size // 4: 3 * size // 4, size // 3: 2 * size // 3] = 1.0
    mask = np.maximum(mask, (rng.random(mask.shape) > 0.9).astype(np.float32))
    return {"image": image, "mask": mask}


def time_step(config, batch_size: int, size: int, repeats: int, mesh):
    """Returns (median wall seconds per step, median process CPU seconds per step, compile seconds,
    compiled step)."""
    state = train_step.create_train_state(config, jax.random.key(config.seed), mesh=mesh)
    step = train_step.make_train_step(config, mesh)
    batch = train_step.shard_batch(make_batch(batch_size, size), mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    if not all(np.isfinite(float(v)) for v in metrics.values()):
        raise RuntimeError(f"non-finite metrics in the benchmark step: {metrics}")
    return statistics.median(wall), statistics.median(cpu), compile_s, compiled


def step_flops(compiled) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", float("nan")))


def peak_tflops(dtype: str, override):
    if override:
        return override
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name in kind:
            return peaks[dtype]
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-batch4", action="store_true")
    parser.add_argument("--skip-fused", action="store_true")
    parser.add_argument("--gpu-batch", type=int, default=None, help="batch for the GPU figures (default 16 on GPU)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    args = parser.parse_args(argv)

    config = big_lama.get_config()
    config.train.batch_norm = "global"
    mesh = train_step.make_mesh(jax.devices()[:1])
    results = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind, "size": args.size}

    results["load_average_before"] = os.getloadavg()[0]
    step_s, step_cpu_s, compile_s, compiled = time_step(config, 1, args.size, args.repeats, mesh)
    flops = step_flops(compiled)
    results.update(step_s=step_s, step_cpu_s=step_cpu_s, compile_s=compile_s, gflop_per_step=flops / 1e9,
                   achieved_gflop_s=flops / 1e9 / step_s)
    if not args.skip_fused:
        fused = big_lama.get_config()
        fused.train.update(batch_norm="global", step_mode="fused")
        results["step_s_fused"], results["step_cpu_s_fused"] = time_step(fused, 1, args.size, args.repeats, mesh)[:2]
    if not args.skip_batch4:
        results["step_s_batch4"], results["step_cpu_s_batch4"] = time_step(config, 4, args.size, args.repeats,
                                                                           mesh)[:2]

    gpu_batch = args.gpu_batch or (16 if jax.default_backend() == "gpu" else None)
    if gpu_batch:
        for dtype, tag in (("float32", "fp32"), ("bfloat16", "bf16")):
            gpu_config = big_lama.get_config()
            gpu_config.train.update(batch_norm="global", compute_dtype=dtype)
            seconds, _, _, gpu_compiled = time_step(gpu_config, gpu_batch, args.size, args.repeats, mesh)
            results[f"gpu_{tag}_img_s"] = gpu_batch / seconds
            peak = peak_tflops(dtype, args.peak_tflops)
            if peak:
                results[f"mfu_{tag}"] = step_flops(gpu_compiled) / seconds / (peak * 1e12)

    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["load_average_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results))
    else:
        for key, value in results.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    sys.exit(main())
