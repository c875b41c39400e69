"""Per-platform program choices for the generator, made once when a program is built for a backend.

Each choice is a measured property of one XLA backend, not of the model: the arithmetic is the
same either way (both variants are parity-tested), only what the compiler is given differs.

- **Residual blocks: unrolled or a loop.** The 18 identical blocks keep one stacked parameter
  tree and run under `nn.scan`. XLA:CPU runs convolution gradients inside a while loop far slower
  (about 20x here), so CPU programs unroll them. TPU compile time grows with every distinct
  convolution instance (seconds each), so TPU programs run them as a loop: one block traced.
  GPU has not been measured yet and keeps the unrolled blocks.
- **Fourier units: XLA's FFT or DFT matrix products** (`models.dft`). See `FFT_IMPL` below and
  `benchmarks/fourier_unit.py`, which measures both per platform.

- **The discriminator's stride-2 input gradients** (`stride2_input_grad`): XLA's, or by phases on
  the TPU chips whose compiler needs it (`TPU_PHASE_INPUT_GRAD`), chosen by device kind.

`remat_blocks` (off unless configured, any platform) is a program choice of the same kind: the
blocks' forward runs again in the backward pass instead of keeping their activations.
"""

from __future__ import annotations

from typing import Optional

import jax

# Blocks unrolled (True) or scanned as a loop (False), per backend.
UNROLL_BLOCKS = {"cpu": True, "gpu": True, "tpu": False}
# "fft" | "dft" per backend, from `benchmarks/fourier_unit.py --topology v5e:2x2 --json` (big-lama's
# unit, 192 channels; 2-core AMD EPYC, one run, 2026-12-02). CPU wall time favours XLA's FFT: at 32²
# forward 4.5 vs 15.8 ms, forward+backward 14.0 vs 18.5 ms; at 64² 37 vs 117 and 123 vs 190 ms.
# TPU v5e (15 images per chip): the DFT matrix products need fewer FLOPs (forward+backward 9.8 vs
# 10.8 GFLOP at 32², 47.4 vs 55.2 at 64²) and the compiler estimates the 32² forward at 1.07 vs
# 1.37 ms (it gives no estimate for the other programs). GPU: not measured; XLA's FFT (cuFFT).
FFT_IMPL = {"cpu": "fft", "gpu": "fft", "tpu": "dft"}

BLOCK_LOOP_CHOICES = ("auto", "unrolled", "scan")
# TPU chips (device kinds) whose compiler aborts on R1's double backward through XLA's stride-2
# input gradient (libtpu 0.0.50.1, v4:2x2x1 and v5p:2x2x1; v5e and v6e compile it): their
# discriminators take it by phases (layers._tpu_stride2_pullback). Elsewhere XLA's form: on v5e the
# phases nearly double the discriminator step's HBM traffic (25.4 vs 14.1 GB per chip at 15 images).
TPU_PHASE_INPUT_GRAD = ("TPU v4", "TPU v5")
STRIDE2_INPUT_GRAD_CHOICES = ("auto", "xla", "phases")
# Keys of config.model.generator and .discriminator that choose how the program is built, not what
# it computes: a checkpoint made with other values (or before they existed) holds the same network.
PROGRAM_KEYS = ("block_loop", "fft_impl", "remat_blocks", "stride2_input_grad")
FFT_IMPL_CHOICES = ("auto", "fft", "dft")


def architecture(network_config) -> dict:
    """A network's config (config.model.<network>, a mapping) without its PROGRAM_KEYS."""
    return {k: v for k, v in dict(network_config).items() if k not in PROGRAM_KEYS}


def backend(platform: Optional[str] = None) -> str:
    """"cpu" | "gpu" | "tpu" for `platform` (a device's `.platform`, e.g. "cuda") or the default backend."""
    platform = platform or jax.default_backend()
    return {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)


def unroll_blocks(block_loop: str, platform: Optional[str] = None) -> bool:
    """`block_loop` ("auto" | "unrolled" | "scan") resolved for `platform`."""
    if block_loop not in BLOCK_LOOP_CHOICES:
        raise ValueError(f"model.generator.block_loop = {block_loop!r}; expected one of {BLOCK_LOOP_CHOICES}")
    if block_loop == "auto":
        return UNROLL_BLOCKS.get(backend(platform), True)
    return block_loop == "unrolled"


def fft_impl(choice: str, platform: Optional[str] = None) -> str:
    """`choice` ("auto" | "fft" | "dft") resolved for `platform`."""
    if choice not in FFT_IMPL_CHOICES:
        raise ValueError(f"model.generator.fft_impl = {choice!r}; expected one of {FFT_IMPL_CHOICES}")
    if choice == "auto":
        return FFT_IMPL.get(backend(platform), "fft")
    return choice


def remat_blocks(choice) -> bool:
    """`choice` (config.model.generator.remat_blocks) checked: a bool, the same on every platform."""
    if not isinstance(choice, bool):
        raise ValueError(f"model.generator.remat_blocks = {choice!r}; expected True or False")
    return choice


def tpu_phase_input_grad(choice: str, device_kind: Optional[str] = None) -> bool:
    """`choice` (config.model.discriminator.stride2_input_grad: "auto" | "xla" | "phases") resolved
    for `device_kind` (a device's `.device_kind`): whether TPU programs take the stride-2 input
    gradients by phases. ("phases" changes nothing in CPU and GPU programs.)"""
    if choice not in STRIDE2_INPUT_GRAD_CHOICES:
        raise ValueError(f"model.discriminator.stride2_input_grad = {choice!r}; expected one of "
                         f"{STRIDE2_INPUT_GRAD_CHOICES}")
    if choice == "auto":
        return device_kind in TPU_PHASE_INPUT_GRAD
    return choice == "phases"
