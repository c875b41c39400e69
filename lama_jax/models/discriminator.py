"""pix2pixHD's NLayerDiscriminator as LaMa configures it (PatchGAN, zero padding 2, 4x4 kernels)."""

from typing import Any, List, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lama_jax.models.layers import BatchNorm, Conv2d, leaky_relu

Dtype = Any


class NLayerDiscriminator(nn.Module):
    """Returns `(logits, features)`: raw patch logits (B, h, w, 1) and the 5 post-LeakyReLU maps.

    Block k is `conv{k}` (+ `bn{k}` for 1 <= k <= n_layers), matching the
    reference's `model{k}.0` / `model{k}.1`. Images enter in [0, 1], unnormalised.
    """

    ndf: int = 64
    n_layers: int = 4
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    tpu_phase_input_grad: bool = False  # stride-2 input gradients by phases in TPU programs (layers.conv2d)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> Tuple[jax.Array, List[jax.Array]]:
        def conv(features, strides, index):
            return Conv2d(features, 4, strides, padding=2, use_bias=True, dtype=self.dtype,
                          tpu_phase_input_grad=self.tpu_phase_input_grad, name=f"conv{index}")

        features = []
        y = leaky_relu(conv(self.ndf, 2, 0)(x))
        features.append(y)
        channels = self.ndf
        for k in range(1, self.n_layers + 1):
            channels = min(channels * 2, 512)
            strides = 2 if k < self.n_layers else 1
            y = conv(channels, strides, k)(y)
            y = leaky_relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name=f"bn{k}")(y, train))
            features.append(y)
        logits = conv(1, 1, self.n_layers + 1)(y)
        return logits.astype(jnp.float32), features
