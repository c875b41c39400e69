"""Reading the PyTorch golden fixtures (tests/fixtures/README.md): NCHW `.npz` files keyed like PyTorch.

Shared by the parity tests and by `benchmarks/accelerator.py`, which reruns the same checks on a device.
"""

import pathlib

import jax.numpy as jnp
import numpy as np

from lama_jax import convert
from lama_jax.models import build_generator

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
# The generator_ffc_small*.npz networks (big-lama's layout at 16 base channels, 2 blocks).
SMALL_GENERATOR = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)


def load(fixtures_dir, name):
    with np.load(pathlib.Path(fixtures_dir) / f"{name}.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def state_dict(arrays, prefix="state_dict/"):
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def generator_fixture(fixtures_dir, name, fft_impl="fft", **overrides):
    """(arrays, generator config, generator, converted variables); fft_impl None: the platform's choice."""
    f = load(fixtures_dir, name)
    cfg = {**SMALL_GENERATOR, **overrides}
    return f, cfg, build_generator(cfg, fft_impl=fft_impl), convert.convert_generator(state_dict(f), cfg)
