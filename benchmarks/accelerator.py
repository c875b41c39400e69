r"""Everything to know before training on an accelerator, in one command: parity, bf16, speed, memory.

    python benchmarks/accelerator.py --json [--budget-s 420] [--lama-root DIR [--torch-python PY]]
    python benchmarks/accelerator.py --json --smoke          # tiny sizes: a CPU check that it all runs

Runs on whatever JAX backend is present (GPU, TPU or CPU). Parts, each timed and each skipped with
a note when what earlier parts cost says the rest of --budget-s would not cover it:

* parity: the PyTorch fixture checks of tests/test_models_parity.py rerun on the device (generator
  eval and train mode, LFU, non-square, odd widths through the FourierUnit, discriminator,
  ResNet50-dilated), at the default matmul precision and under
  `jax.default_matmul_precision("highest")`: max |Δ| per check against the CPU tolerance. On GPU the
  default runs float32 convolutions as TF32, so only "highest" is expected within tolerance.
* bf16: the tiny config trained 200 steps (--smoke: a few) from the same init with float32 and with
  bfloat16 compute on fixed synthetic batches: both loss curves, the largest relative gap between
  their 20-step moving averages, and a count of non-finite metrics.
* throughput: the big-lama training step at 256² (--smoke: the tiny config at 16²) in both step
  modes, float32 and bfloat16, at per-device batch 15, 1, 4, 8 (that order, so a short budget keeps
  the released model's per-GPU batch) and, on GPU/TPU, growing until the compiled program no longer
  fits or the device runs out of memory: img/s, ms/step, compile s, the program's memory from the
  compiler, the device's peak bytes in use so far (a process-wide peak: JAX cannot reset it), XLA's
  FLOP count, achieved TFLOP/s and MFU against the dense peak of known chips (PEAK_TFLOPS).
  Then generator inference at 512² and 1024², and multi-scale refinement at 1024² with its peak
  device memory.
* pytorch (with --lama-root, an advimman/lama checkout): upstream's generator eval and training step
  (float32) on the same device and their ratio to the JAX figures, with the networks of the config
  the JAX side runs. It runs first, so that JAX's preallocated device memory is not yet taken, in
  --torch-python (default this interpreter), the one with torch and LaMa's requirements: they pin
  numpy < 2, which current JAX does not run with, so the two usually live in two environments.
* machine: device kind and count, driver (nvidia-smi), package versions, CPU model, load average.

One device is measured (the first); batches are per device. A field that cannot be measured here
(device memory on CPU, MFU of an unknown chip, ...) is null with a sibling `<field>_reason`.

Offline on a preinstalled GPU image this needs jax (with its plugin), flax, optax and numpy, plus
one small pure-Python wheel to bring: ml_collections (the configs; it needs absl-py and PyYAML,
which optax and flax already install). Orbax, Grain, TensorFlow Datasets, OpenCV and PIL are not
imported. The PyTorch part needs torch and what upstream LaMa imports (benchmarks/upstream_lama.py).
It reads tests/fixtures/ of this checkout, so run it from a clone.
"""

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

# This checkout's lama_jax (not another installed copy) and its fixture readers.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fixture_arrays  # noqa: E402
import resnet_recipe  # noqa: E402
import upstream_lama  # noqa: E402
from lama_jax import aot, convert, train_step  # noqa: E402
from lama_jax.configs import big_lama, tiny  # noqa: E402
from lama_jax.models import FourierUnit, NLayerDiscriminator, ResNet50Dilated, build_generator  # noqa: E402
from lama_jax.models import platform as platform_choices  # noqa: E402

# Dense tensor-core peak TFLOP/s (vendor datasheets, SXM parts). JAX runs float32 convolutions on
# GPU as TF32 at its default precision, hence the TF32 peak for float32.
PEAK_TFLOPS = {
    "H200": {"float32": 495.0, "bfloat16": 989.0},
    "H100": {"float32": 495.0, "bfloat16": 989.0},
    "A100": {"float32": 156.0, "bfloat16": 312.0},
}
# Seconds a part is assumed to need before anything comparable has run (a 2-core CPU's figures,
# generous for an accelerator); measured costs replace them as soon as there are any.
PRIOR_S = {
    "smoke": {"parity": 20, "step": 40, "inference": 5, "refinement": 20, "pytorch": 30},
    "full": {"parity": 40, "step": 120, "inference": 30, "refinement": 120, "pytorch": 120},
}
PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
            "libtpu", "flax", "optax", "numpy", "ml_collections", "torch")
FULL = dict(bf16_size=64, bf16_batch=8, bf16_steps=200, bf16_window=20, step_config="big_lama", step_size=256,
            step_batches=(15, 1, 4, 8), repeats=5, inference_sizes=(512, 1024), refine_config="big_lama",
            refine_size=1024, refine_min_side=512, refine_iters=3, torch_eval_size=512)
SMOKE = dict(bf16_size=16, bf16_batch=2, bf16_steps=4, bf16_window=2, step_config="tiny", step_size=16,
             step_batches=(2,), repeats=2, inference_sizes=(32, 64), refine_config="tiny",
             refine_size=32, refine_min_side=16, refine_iters=2, torch_eval_size=64)


class Budget:
    """Seconds left of --budget-s, and what was measured so far to estimate the next part's cost."""

    def __init__(self, seconds: float, mode: str):
        self.seconds, self.start, self.prior = seconds, time.perf_counter(), PRIOR_S[mode]
        self.observed, self.parts = {}, set(PARTS)

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def estimate(self, part: str) -> float:
        return self.observed.get(part, self.prior[part])

    def skip_note(self, estimate_s: float):
        """None when `estimate_s` fits in what is left, else the note saying why it was skipped."""
        if estimate_s <= self.left():
            return None
        return (f"skipped: needs about {estimate_s:.0f} s, {max(self.left(), 0):.0f} s of --budget-s "
                f"{self.seconds:g} left")


def null(result: dict, field: str, reason: str) -> None:
    result[field], result[f"{field}_reason"] = None, reason


def peak_device_bytes(device):
    stats = device.memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def set_device_memory(result: dict, device, field: str = "device_peak_bytes") -> None:
    value = peak_device_bytes(device)
    if value is None:
        null(result, field, f"{device.platform}: device.memory_stats() reports no peak")
    else:
        result[field] = int(value)


def synthetic_batch(batch_size: int, size: int, seed: int):
    """Smooth random images (sums of sinusoids) and a box hole each: a batch the losses can learn."""
    rng = np.random.default_rng(seed)
    coords = np.linspace(0.0, 1.0, size, dtype=np.float32)
    freq = rng.uniform(1, 6, (2, batch_size, 1, 1, 3)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (batch_size, 1, 1, 3)).astype(np.float32)
    image = 0.5 + 0.25 * (np.sin(freq[0] * coords[None, :, None, None] * 6 + phase)
                          + np.cos(freq[1] * coords[None, None, :, None] * 6))
    mask = np.zeros((batch_size, size, size, 1), np.float32)
    for i in range(batch_size):
        top, left = rng.integers(0, size // 2, 2)
        mask[i, top:top + size // 3 + 1, left:left + size // 3 + 1] = 1.0
    return {"image": np.clip(image, 0, 1).astype(np.float32), "mask": mask}


def step_config(name: str, mode: str, dtype: str):
    config = {"big_lama": big_lama, "tiny": tiny}[name].get_config()
    config.train.update(step_mode=mode, compute_dtype=dtype, batch_norm="global")
    return config


def random_variables(generator):
    """Random generator weights; an RBG key, whose draws XLA compiles many times faster than threefry's."""
    key = jax.random.key(0, impl="rbg")
    return jax.jit(lambda: generator.init(key, jnp.zeros((1, 64, 64, 4)), train=False))()


def compiled_step(config, mesh, batch_size: int, size: int):
    """(fresh state, sharded batch, compiled step, compile seconds) on `mesh`."""
    state = train_step.create_train_state(config, jax.random.key(config.seed), mesh=mesh)
    batch = train_step.shard_batch(synthetic_batch(batch_size, size, seed=0), mesh)
    start = time.perf_counter()
    compiled = train_step.make_train_step(config, mesh).lower(state, batch).compile()
    return state, batch, compiled, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# Parts


def machine_part(args, budget) -> dict:
    device = jax.devices()[0]
    result = dict(platform=device.platform, device_kind=device.device_kind, device_count=jax.device_count(),
                  process_count=jax.process_count(), python=platform.python_version(),
                  cores=len(os.sched_getaffinity(0)), load_average=list(os.getloadavg()))
    result["packages"] = {}
    for name in PACKAGES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            result["packages"][name] = importlib.metadata.version(name)
    try:
        with open("/proc/cpuinfo") as f:
            result["cpu_model"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        null(result, "cpu_model", "no model name in /proc/cpuinfo")
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        result["nvidia_smi"] = query.stdout.strip().splitlines() or None
        if result["nvidia_smi"] is None:
            result["nvidia_smi_reason"] = f"nvidia-smi failed: {query.stderr.strip()[:200]}"
    else:
        null(result, "nvidia_smi", "nvidia-smi not on PATH")
    return result


def _max_abs(actual, expected_nchw) -> float:
    expected = np.asarray(expected_nchw)
    if expected.ndim == 4:
        expected = expected.transpose(0, 2, 3, 1)
    actual = np.asarray(actual, np.float32)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} != fixture {expected.shape}")
    return float(np.abs(actual - expected).max())


def _parity_checks(fixtures):
    """{name: (tolerance, fn() -> max |Δ|)}; each fn jits the module's apply as it would run in training."""
    checks = {}

    def fourier_unit(mode, suffix):
        f = fixture_arrays.load(fixtures, "fourier_unit")
        x = fixture_arrays.nhwc(f[f"input/x{suffix}"])
        module = FourierUnit(8, fft_impl=platform_choices.fft_impl("auto"))
        shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
        variables = convert.torch_to_flax(fixture_arrays.state_dict(f), shapes, convert.submodule_key_fn())
        apply = jax.jit(lambda v, x: module.apply(v, x, train=mode == "train", mutable=["batch_stats"])[0])
        return _max_abs(apply(variables, x), f[f"{mode}{suffix}/output"])

    def generator(name, mode, **overrides):
        f, _, module, variables = fixture_arrays.generator_fixture(fixtures, name, fft_impl=None, **overrides)
        apply = jax.jit(lambda v, x: module.apply(v, x, train=mode == "train", mutable=["batch_stats"])[0])
        return _max_abs(apply(variables, fixture_arrays.nhwc(f["input/x"])), f[f"{mode}/output"])

    def discriminator(mode):
        f = fixture_arrays.load(fixtures, "nlayer_discriminator")
        cfg = dict(ndf=16, n_layers=4)
        variables = convert.convert_discriminator(fixture_arrays.state_dict(f), cfg)
        apply = jax.jit(lambda v, x: NLayerDiscriminator(**cfg).apply(v, x, train=mode == "train",
                                                                      mutable=["batch_stats"])[0])
        logits, features = apply(variables, fixture_arrays.nhwc(f["input/x"]))
        return max([_max_abs(logits, f[f"{mode}/logits"])]
                   + [_max_abs(feat, f[f"{mode}/feat{k}"]) for k, feat in enumerate(features)])

    resnet_variables = []

    def resnet(mode):
        f = fixture_arrays.load(fixtures, "resnet_pl")
        if not resnet_variables:  # regenerated once (23.6M parameters), shared by both modes
            resnet_variables.append(convert.convert_resnet50_dilated(resnet_recipe.resnet_pl_state_dict()))
        mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
        apply = jax.jit(lambda v, x: ResNet50Dilated().apply(v, x, train=mode == "train", mutable=["batch_stats"])[0])
        features = apply(resnet_variables[0], (fixture_arrays.nhwc(f["input/target"]) - mean) / std)
        # Relative to each layer's largest value, as the test's tolerance is.
        return max(_max_abs(feat, f[f"{mode}/target_feat{k}"]) / np.abs(f[f"{mode}/target_feat{k}"]).max()
                   for k, feat in enumerate(features))

    for mode in ("eval", "train"):
        checks[f"fourier_unit_{mode}"] = (1e-5, lambda mode=mode: fourier_unit(mode, ""))
        checks[f"fourier_unit_odd_width_{mode}"] = (1e-5, lambda mode=mode: fourier_unit(mode, "_odd"))
        checks[f"generator_{mode}"] = (2e-5, lambda mode=mode: generator("generator_ffc_small", mode))
        checks[f"generator_lfu_{mode}"] = (2e-5, lambda mode=mode: generator("generator_ffc_small_lfu", mode,
                                                                              enable_lfu=True))
        checks[f"generator_non_square_{mode}"] = (2e-5, lambda mode=mode: generator("generator_ffc_small_nonsquare",
                                                                                     mode))
        checks[f"discriminator_{mode}"] = (2e-5, lambda mode=mode: discriminator(mode))
        checks[f"resnet50_dilated_{mode}_relative"] = (1e-3 if mode == "train" else 1e-5,
                                                       lambda mode=mode: resnet(mode))
    return checks


# What --smoke checks: the modules that compile in about a second on a 2-core CPU (each generator
# and ResNet program takes 5-10 s there); the others are null with a reason.
SMOKE_PARITY = ("fourier_unit_", "discriminator_")


def parity_part(args, budget) -> dict:
    """Max |Δ| of every fixture check at the default and at the highest matmul precision."""
    result = {"fft_impl": platform_choices.fft_impl("auto"), "checks": {}}
    for precision in ("default", "highest"):
        context = contextlib.nullcontext() if precision == "default" else jax.default_matmul_precision("highest")
        with context:
            for name, (tolerance, check) in _parity_checks(fixture_arrays.FIXTURES).items():
                entry = result["checks"].setdefault(name, {"tolerance": tolerance})
                if args.smoke and not name.startswith(SMOKE_PARITY):
                    null(entry, precision, "--smoke checks the FourierUnit and discriminator only")
                    null(entry, f"{precision}_within_tolerance", "--smoke: not checked")
                    continue
                entry[precision] = float(check())
                entry[f"{precision}_within_tolerance"] = bool(entry[precision] <= tolerance)
    checked = [c["highest_within_tolerance"] for c in result["checks"].values() if c["highest"] is not None]
    result["all_checked_within_tolerance_highest"] = all(checked)
    return result


def _moving_average(values, window: int) -> np.ndarray:
    return np.convolve(np.asarray(values, np.float64), np.ones(window) / window, mode="valid")


def bf16_part(args, budget, sizes, programs) -> dict:
    """The tiny config trained from one init in float32 and in bfloat16 compute on the same batches."""
    mesh = train_step.make_mesh(jax.devices()[:1])
    batch_size, size, steps, window = sizes["bf16_batch"], sizes["bf16_size"], sizes["bf16_steps"], sizes["bf16_window"]
    # A fixed pool of batches, cycled: both runs see the same data in the same order.
    pool = [train_step.shard_batch(synthetic_batch(batch_size, size, seed=k), mesh) for k in range(8)]
    result = dict(config="tiny", per_device_batch=batch_size, size=size, steps=steps, moving_average_window=window)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        config = step_config("tiny", "reference", dtype)
        state, _, compiled, compile_s = compiled_step(config, mesh, batch_size, size)
        programs[("tiny", "reference", dtype, batch_size, size)] = (compiled, compile_s)
        history, non_finite = {"gen_total": [], "discr_total": []}, 0
        start = time.perf_counter()
        for step in range(steps):
            state, metrics = compiled(state, pool[step % len(pool)])
            metrics = jax.device_get(metrics)
            non_finite += sum(not np.isfinite(v) for v in metrics.values())
            for key in history:
                history[key].append(float(metrics[key]))
        curves[dtype] = history
        result[f"{dtype}_compile_s"] = compile_s
        result[f"{dtype}_train_s"] = time.perf_counter() - start
        result[f"{dtype}_non_finite_metrics"] = int(non_finite)
        budget.observed["step"] = compile_s + result[f"{dtype}_train_s"] / steps
    result["loss_curves"] = curves
    for key in ("gen_total", "discr_total"):
        reference = _moving_average(curves["float32"][key], window)
        gap = np.abs(_moving_average(curves["bfloat16"][key], window) - reference) / np.maximum(np.abs(reference),
                                                                                                1e-12)
        result[f"{key}_max_relative_gap"] = float(gap.max())
    result["all_finite"] = result["float32_non_finite_metrics"] == 0 == result["bfloat16_non_finite_metrics"]
    return result


def _peak_tflops(device_kind: str, dtype: str):
    """(peak TFLOP/s, None) for a known chip, else (None, why)."""
    if "PCIe" in device_kind or "NVL" in device_kind:
        return None, f"{device_kind}: only SXM parts are in PEAK_TFLOPS"
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_kind:
            return peaks[dtype], None
    return None, f"no dense {dtype} peak known for device kind {device_kind!r}"


def _measure_step(config_name, mode, dtype, batch_size, size, repeats, mesh, programs) -> dict:
    device = mesh.devices.flat[0]
    config = step_config(config_name, mode, dtype)
    key = (config_name, mode, dtype, batch_size, size)
    entry = dict(step_mode=mode, compute_dtype=dtype, per_device_batch=batch_size)
    if key in programs:  # compiled by an earlier part (the smoke's bf16 steps): reuse, report its compile time
        compiled, compile_s = programs[key]
        state = train_step.create_train_state(config, jax.random.key(config.seed), mesh=mesh)
        batch = train_step.shard_batch(synthetic_batch(batch_size, size, seed=0), mesh)
    else:
        state, batch, compiled, compile_s = compiled_step(config, mesh, batch_size, size)
    entry["compile_s"] = compile_s
    report = aot.describe_compiled(compiled, device_kind=device.device_kind, batch_per_step=batch_size)
    entry["program_memory_bytes"] = report.get("memory_bytes", {}).get("total")
    capacity = (device.memory_stats() or {}).get("bytes_limit")
    if capacity and entry["program_memory_bytes"] and entry["program_memory_bytes"] > capacity:
        entry["fits"] = False
        return entry
    start = time.perf_counter()
    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    entry["first_step_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        state, metrics = compiled(state, batch)
    metrics = jax.device_get(metrics)
    seconds = (time.perf_counter() - start) / repeats
    entry.update(fits=True, ms_per_step=seconds * 1e3, img_per_s=batch_size / seconds,
                 metrics_finite=bool(all(np.isfinite(v) for v in metrics.values())))
    set_device_memory(entry, device, "device_peak_bytes_so_far")
    if report["flops"]:
        entry["gflop_per_step"] = report["flops"] / 1e9
        entry["achieved_tflop_s"] = report["flops"] / seconds / 1e12
        peak, why = _peak_tflops(device.device_kind, dtype)
        if peak:
            entry["mfu"] = entry["achieved_tflop_s"] / peak
        else:
            null(entry, "mfu", why)
    else:
        for field in ("gflop_per_step", "achieved_tflop_s", "mfu"):
            null(entry, field, "XLA's cost analysis gives no FLOP count on this backend")
    del state, batch
    return entry


def _grown(batch_size: int) -> int:
    return max(batch_size + 1, int(batch_size * 1.5 + 7) // 8 * 8)


def throughput_part(args, budget, sizes, programs, reserve_s: float) -> dict:
    """Training steps per (step mode, dtype, batch), highest-priority batch first, then the largest that fits."""
    mesh = train_step.make_mesh(jax.devices()[:1])
    name, size, repeats = sizes["step_config"], sizes["step_size"], sizes["repeats"]
    result = dict(config=name, size=size, repeats=repeats, steps=[], skipped=[])
    combos = [(mode, dtype) for mode in ("reference", "fused") for dtype in ("float32", "bfloat16")]
    last = {}  # (mode, dtype) -> (batch, seconds that configuration took)

    def estimate(mode, dtype, batch_size):
        if (mode, dtype) in last:
            previous_batch, previous_s = last[(mode, dtype)]
            return previous_s * max(1.0, batch_size / previous_batch)
        costs = [s for _, s in last.values()]
        return max(costs) if costs else budget.estimate("step") * (1 if args.smoke else 3)

    def run(mode, dtype, batch_size):
        needed = estimate(mode, dtype, batch_size)
        note = budget.skip_note(needed + reserve_s)
        if note:
            result["skipped"].append(dict(step_mode=mode, compute_dtype=dtype, per_device_batch=batch_size, note=note))
            return None
        start = time.perf_counter()
        try:
            entry = _measure_step(name, mode, dtype, batch_size, size, repeats, mesh, programs)
        except Exception as e:  # an accelerator out of memory raises XlaRuntimeError RESOURCE_EXHAUSTED
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            entry = dict(step_mode=mode, compute_dtype=dtype, per_device_batch=batch_size, fits=False,
                         error=str(e).splitlines()[0][:200])
        entry["seconds"] = time.perf_counter() - start
        last[(mode, dtype)] = (batch_size, entry["seconds"])
        result["steps"].append(entry)
        return entry

    for batch_size in sizes["step_batches"]:
        for mode, dtype in combos:
            run(mode, dtype, batch_size)
    if jax.devices()[0].platform == "cpu":
        null(result, "largest_batch", "CPU: host memory, no device limit to grow against")
    else:
        result["largest_batch"] = {}
        for mode, dtype in combos:
            fitted = [e["per_device_batch"] for e in result["steps"]
                      if (e["step_mode"], e["compute_dtype"]) == (mode, dtype) and e["fits"]]
            batch_size = max(fitted, default=0)
            while fitted and batch_size == max(fitted):
                entry = run(mode, dtype, _grown(batch_size))
                if entry is None or not entry["fits"]:
                    break
                fitted.append(entry["per_device_batch"])
                batch_size = entry["per_device_batch"]
            result["largest_batch"][f"{mode}_{dtype}"] = max(fitted, default=None)
    return result


def inference_part(args, budget, sizes) -> dict:
    """Eval-mode generator forward, batch 1, at each size and dtype: compile s and ms per image."""
    config = {"big_lama": big_lama, "tiny": tiny}[sizes["step_config"]].get_config()
    device = jax.devices()[0]
    result = dict(config=sizes["step_config"], runs=[], skipped=[])
    variables = random_variables(build_generator(config.model.generator))  # float32 weights for either dtype
    last = None  # (size, seconds) of the previous run
    for size in sizes["inference_sizes"]:
        for dtype in ("float32", "bfloat16"):
            estimate = budget.estimate("inference") if last is None else last[1] * (size / last[0]) ** 2
            note = budget.skip_note(estimate)
            if note:
                result["skipped"].append(dict(size=size, compute_dtype=dtype, note=note))
                continue
            started = time.perf_counter()
            generator = build_generator(config.model.generator, dtype=dtype)
            x = jnp.asarray(synthetic_batch(1, size, seed=0)["image"])
            x = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
            start = time.perf_counter()
            compiled = jax.jit(lambda v, x: generator.apply(v, x, train=False)).lower(variables, x).compile()
            compile_s = time.perf_counter() - start
            jax.block_until_ready(compiled(variables, x))
            start = time.perf_counter()
            for _ in range(sizes["repeats"]):
                out = compiled(variables, x)
            jax.block_until_ready(out)
            entry = dict(size=size, compute_dtype=dtype, compile_s=compile_s,
                         ms_per_image=(time.perf_counter() - start) / sizes["repeats"] * 1e3)
            set_device_memory(entry, device, "device_peak_bytes_so_far")
            result["runs"].append(entry)
            last = (size, time.perf_counter() - started)
    return result


def refinement_part(args, budget, sizes) -> dict:
    """Multi-scale refinement of one image with a box hole: wall time (compile included) and peak memory."""
    from lama_jax.refinement import RefinementOptions, Refiner  # pylint: disable=g-import-not-at-top

    config = {"big_lama": big_lama, "tiny": tiny}[sizes["refine_config"]].get_config()
    generator = build_generator(config.model.generator)
    variables = random_variables(generator)
    options = RefinementOptions(n_iters=sizes["refine_iters"], min_side=sizes["refine_min_side"])
    size = sizes["refine_size"]
    image = synthetic_batch(1, size, seed=0)["image"][0]
    mask = np.zeros((size, size, 1), np.float32)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    start = time.perf_counter()
    refined = Refiner(generator, variables, options).run(image, mask)
    result = dict(config=sizes["refine_config"], size=size, iters_per_level=options.n_iters,
                  levels=[list(level.size) for level in refined.levels], seconds_with_compile=time.perf_counter() - start,
                  finite=bool(np.isfinite(refined.inpainted).all()),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    # Refinement holds more than training at this size: the process-wide peak so far is its peak
    # unless a throughput batch needed more.
    set_device_memory(result, jax.devices()[0], "device_peak_bytes_so_far")
    return result


# ---------------------------------------------------------------------------------------------
# PyTorch: a child interpreter runs upstream LaMa before this one's JAX takes the device


def pytorch_part(args, budget, sizes) -> dict:
    """Upstream LaMa's eval and training steps on torch's device, run by `--torch-python` (default this
    interpreter) through benchmarks/upstream_lama.py, which never imports JAX: LaMa's requirements
    (numpy < 2) and current JAX's usually live in two environments. The batches are written here."""
    seconds = min(budget.left(), budget.estimate("pytorch") * 2)
    with tempfile.TemporaryDirectory() as folder:
        batches = pathlib.Path(folder, "batches.npz")
        arrays = {"eval": synthetic_batch(1, sizes["torch_eval_size"], seed=0)}
        arrays.update({f"step{b}": synthetic_batch(b, sizes["step_size"], seed=0) for b in sizes["step_batches"]})
        np.savez(batches, **{f"{name}/{key}": value for name, batch in arrays.items() for key, value in batch.items()})
        request = dict(lama_root=args.lama_root, batches=str(batches), step_batches=list(sizes["step_batches"]),
                       repeats=sizes["repeats"], seconds=seconds,
                       config=dataclasses.asdict(upstream_lama.UpstreamConfig.from_lama_jax(
                           step_config(sizes["step_config"], "reference", "float32"))))
        try:
            child = subprocess.run([args.torch_python, upstream_lama.__file__, "--device-benchmark", json.dumps(request)],
                                   capture_output=True, text=True, timeout=max(seconds * 2, 60))
        except (OSError, subprocess.TimeoutExpired) as e:
            return {"unavailable": f"--torch-python {args.torch_python}: {e}"}
    if child.returncode:
        return {"unavailable": f"the PyTorch child ({args.torch_python}) failed: "
                               f"{(child.stderr.strip().splitlines() or ['no message'])[-1]}"}
    return json.loads(child.stdout.strip().splitlines()[-1])


def pytorch_comparison(torch_result, results, sizes) -> dict:
    """JAX / PyTorch ratios of the same measurements on the same kind of device."""
    jax_platform = results["machine"]["platform"]
    if sizes is SMOKE:
        return {"ratios": None, "ratios_reason": "--smoke: the tiny config at toy sizes on both sides, not a speed comparison"}
    if {"cpu": "cpu", "gpu": "cuda"}.get(jax_platform) != torch_result.get("device"):
        return {"ratios": None, "ratios_reason": f"torch ran on {torch_result.get('device')}, JAX on {jax_platform}"}
    ratios = {}
    jax_eval = [r for r in results.get("inference", {}).get("runs", [])
                if r["size"] == torch_result["eval"]["size"] and r["compute_dtype"] == "float32"]
    if jax_eval:
        ratios["eval_speedup"] = torch_result["eval"]["ms_per_image"] / jax_eval[0]["ms_per_image"]
    for torch_step in torch_result["train_steps"]:
        for step in results.get("throughput", {}).get("steps", []):
            if (step.get("img_per_s") and step["step_mode"] == "reference" and step["compute_dtype"] == "float32"
                    and step["per_device_batch"] == torch_step["per_device_batch"]):
                ratios[f"train_speedup_batch{step['per_device_batch']}"] = step["img_per_s"] / torch_step["img_per_s"]
    return {"ratios": ratios}


# ---------------------------------------------------------------------------------------------
# Main


PARTS = ("parity", "bf16", "throughput", "inference", "refinement", "pytorch")


def _timed(name, part, budget, results, *part_args, estimate=None):
    if name not in budget.parts:
        results[name] = {"skipped": "not in --parts"}
        return
    note = budget.skip_note(budget.estimate(name) if estimate is None else estimate)
    if note:
        results[name] = {"skipped": note}
        return
    start = time.perf_counter()
    results[name] = part(*part_args)
    results[name]["seconds"] = time.perf_counter() - start
    budget.observed.setdefault(name, results[name]["seconds"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lama-root", help="an advimman/lama checkout, for the PyTorch comparison")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of all parts")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that every part runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)} (machine is always reported)")
    parser.add_argument("--torch-python", default=sys.executable,
                        help="the interpreter with torch and LaMa's requirements (default: this one)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"--parts: unknown {sorted(parts - set(PARTS))}; choose from {','.join(PARTS)}")
    sizes = SMOKE if args.smoke else FULL
    budget = Budget(args.budget_s, "smoke" if args.smoke else "full")
    budget.parts = parts
    results = {"smoke": args.smoke, "budget_s": args.budget_s, "sizes": sizes}
    torch_result = None
    if args.lama_root and "pytorch" in parts:  # first: JAX has not yet taken the device's memory
        _timed("pytorch", pytorch_part, budget, results, args, budget, sizes)
        torch_result = results.pop("pytorch")
    results["machine"] = machine_part(args, budget)
    programs = {}  # compiled training steps shared between the bf16 and throughput parts
    _timed("parity", parity_part, budget, results, args, budget)
    _timed("bf16", bf16_part, budget, results, args, budget, sizes, programs, estimate=2 * budget.estimate("step"))
    reserve = budget.estimate("inference") + budget.estimate("refinement")
    _timed("throughput", throughput_part, budget, results, args, budget, sizes, programs, reserve,
           estimate=budget.estimate("step") + reserve)
    _timed("inference", inference_part, budget, results, args, budget, sizes)
    _timed("refinement", refinement_part, budget, results, args, budget, sizes)
    if "pytorch" not in parts:
        results["pytorch"] = {"skipped": "not in --parts"}
    elif not args.lama_root:
        results["pytorch"] = {"ratios": None, "ratios_reason": "no --lama-root given"}
    elif "eval" not in torch_result:
        results["pytorch"] = dict(torch_result, ratios=None,
                                  ratios_reason=torch_result.get("unavailable") or torch_result.get("skipped"))
    else:
        results["pytorch"] = dict(torch_result, **pytorch_comparison(torch_result, results, sizes))
    results["machine"]["load_average_after"] = list(os.getloadavg())
    results["total_s"] = time.perf_counter() - budget.start
    print(json.dumps(results, default=float) if args.json else json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
