"""Flax modules of LaMa and their constructors from config."""

from lama_jax.models.discriminator import NLayerDiscriminator
from lama_jax.models.ffc import FFC, FFCBnAct, FFCResNetGenerator, FFCResnetBlock, FourierUnit, SpectralTransform
from lama_jax.models.layers import BatchNorm, Conv2d, ConvTranspose2d
from lama_jax.models.resnet import ResNet50Dilated

from typing import Optional

import jax.numpy as jnp

from lama_jax.models import platform as platform_choices


def compute_dtype(name: str):
    """"float32" | "bfloat16" -> the jnp dtype layers compute in."""
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def build_generator(cfg, *, bn_groups: int = 1, dtype: str = "float32", fft_impl: Optional[str] = None,
                    platform: Optional[str] = None) -> FFCResNetGenerator:
    """`cfg`: a mapping with ngf, n_downsampling, n_blocks, ratio, enable_lfu (config.model.generator),
    optionally block_loop and fft_impl (default "auto") and remat_blocks (default False).

    The program choices ("auto" ones) are resolved for `platform` (a device platform such as "cpu",
    "cuda", "tpu"; default: JAX's default backend), see `lama_jax.models.platform`. `fft_impl`
    overrides the config's: "fft" (XLA's FFT) or "dft" (matrix products; shape-polymorphic export).
    """
    return FFCResNetGenerator(
        ngf=cfg["ngf"], n_downsampling=cfg["n_downsampling"], n_blocks=cfg["n_blocks"],
        ratio=cfg["ratio"], enable_lfu=cfg["enable_lfu"], bn_groups=bn_groups, dtype=compute_dtype(dtype),
        fft_impl=platform_choices.fft_impl(fft_impl or cfg.get("fft_impl", "auto"), platform),
        unroll_blocks=platform_choices.unroll_blocks(cfg.get("block_loop", "auto"), platform),
        remat_blocks=platform_choices.remat_blocks(cfg.get("remat_blocks", False)),
    )


def build_discriminator(cfg, *, bn_groups: int = 1, dtype: str = "float32",
                        device_kind: Optional[str] = None) -> NLayerDiscriminator:
    """`cfg`: a mapping with ndf and n_layers (config.model.discriminator), optionally
    stride2_input_grad (default "auto", resolved for `device_kind`, e.g. "TPU v4"; see
    `lama_jax.models.platform`)."""
    return NLayerDiscriminator(
        ndf=cfg["ndf"], n_layers=cfg["n_layers"], bn_groups=bn_groups, dtype=compute_dtype(dtype),
        tpu_phase_input_grad=platform_choices.tpu_phase_input_grad(cfg.get("stride2_input_grad", "auto"),
                                                                   device_kind))


__all__ = [
    "BatchNorm", "Conv2d", "ConvTranspose2d", "FFC", "FFCBnAct", "FFCResNetGenerator", "FFCResnetBlock",
    "FourierUnit", "NLayerDiscriminator", "ResNet50Dilated", "SpectralTransform",
    "build_discriminator", "build_generator", "compute_dtype",
]
