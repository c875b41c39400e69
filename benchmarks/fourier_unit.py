"""XLA's FFT against DFT matrix products for big-lama's Fourier units, per platform: the evidence
behind `model.generator.fft_impl = "auto"` (lama_jax/models/platform.py).

    python benchmarks/fourier_unit.py --json                      # this machine: wall time
    python benchmarks/fourier_unit.py --topology v5e:2x2 --json   # + a TPU's compiler estimates (libtpu)

Big-lama's residual blocks run a FourierUnit on the global stream at 1/8 of the image side: 192
channels at 32x32 for 256² inputs, 64x64 for 512². For each size and both implementations it
reports the train-mode forward and forward+backward (what training runs): on this machine the
median wall time (batch 1, after a warm-up); with `--topology`, for one chip of that TPU at
`--tpu-batch` images, the compiler's `optimal_seconds`, its FLOPs and the compile time.
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # this checkout's lama_jax, not an installed one
from generator import median_ms  # noqa: E402  (this folder's timing helper; scripts run with it on sys.path)
from lama_jax import aot  # noqa: E402
from lama_jax.models import FourierUnit  # noqa: E402

CHANNELS = 192  # big-lama: 512 bottleneck channels x ratio 0.75 = 384 global, halved by conv1
SIDES = {256: 32, 512: 64}  # image side -> Fourier unit side (three stride-2 downsamplings)


def programs(impl: str, side: int, batch: int):
    """(variables, x, forward, forward+backward) of one FourierUnit with random weights."""
    unit = FourierUnit(CHANNELS, fft_impl=impl)
    x = jax.random.normal(jax.random.key(0), (batch, side, side, CHANNELS), jnp.float32)
    variables = unit.init(jax.random.key(1), x, train=False)

    def forward(variables, x):
        out, _ = unit.apply(variables, x, train=True, mutable=["batch_stats"])
        return out

    def loss(params, x):
        return jnp.sum(forward({"params": params, "batch_stats": variables["batch_stats"]}, x) ** 2)

    forward_backward = jax.grad(loss, argnums=(0, 1))
    return variables, x, forward, lambda variables, x: forward_backward(variables["params"], x)


def measure_local(repeats: int) -> dict:
    results = {}
    for size, side in SIDES.items():
        for impl in ("fft", "dft"):
            variables, x, forward, forward_backward = programs(impl, side, 1)
            results[f"{impl}_{size}"] = dict(
                forward_ms=median_ms(jax.jit(forward), variables, x, repeats=repeats),
                forward_backward_ms=median_ms(jax.jit(forward_backward), variables, x, repeats=repeats))
    return results


def measure_topology(topology: str, batch: int) -> dict:
    device = aot.topology_devices(topology)[0]  # one chip: the unit has no collectives
    sharding = jax.sharding.SingleDeviceSharding(device)
    results = {}
    for size, side in SIDES.items():
        for impl in ("fft", "dft"):
            variables, x, forward, forward_backward = programs(impl, side, batch)
            abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                                    (variables, x))
            entry = {}
            for name, fn in (("forward", forward), ("forward_backward", forward_backward)):
                started = time.perf_counter()
                compiled = jax.jit(fn).lower(*abstract).compile()
                report = aot.describe_compiled(compiled, device_kind=device.device_kind, batch_per_step=batch)
                entry[name] = dict(compile_s=time.perf_counter() - started, flops=report["flops"],
                                   estimated_ms=(report["estimated_step_s"] or 0) * 1e3 or None)
            results[f"{impl}_{size}"] = entry
    return dict(device_kind=device.device_kind, batch=batch, results=results)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--topology", default=None, help="also compile for one chip of this TPU topology")
    parser.add_argument("--tpu-batch", type=int, default=15, help="images per chip for the TPU estimates")
    parser.add_argument("--skip-local", action="store_true", help="only the TPU estimates")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    out = dict(machine=dict(cpu=cpu_model(), cores=os.cpu_count(),
                            load_avg=os.getloadavg(), backend=jax.default_backend(), jax=jax.__version__))
    if not args.skip_local:
        out["local"] = measure_local(args.repeats)
    if args.topology:
        try:
            out["tpu"] = measure_topology(args.topology, args.tpu_batch)
        except aot.AotError as e:
            sys.exit(f"error: {e}")
    print(json.dumps(out, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
