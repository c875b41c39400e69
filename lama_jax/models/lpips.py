"""LPIPS (net-lin, VGG16, version 0.1) as LaMa's evaluator uses it, in Flax (NHWC).

Both images go from [0, 1] to [-1, 1], then through the v0.1 ScalingLayer
((x - shift) / scale), and through torchvision's VGG16 `features` up to relu5_3.
At relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 the features are unit-normalised
along channels (eps 1e-10 added to the norm), their squared difference is weighted
by a learned non-negative 1x1 conv without bias (the "lin" heads), averaged over
space and summed over the five layers: one distance per image.

Parameter names follow torchvision's `features.<index>` (here `features_<index>`)
and LPIPS's `lin<k>`, so the converter in `lama_jax.eval_weights` is a rename plus
a transpose.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# (torchvision features index, output channels) of each 3x3 conv; "M" is a 2x2 max-pool.
VGG16_LAYOUT = (
    (0, 64), (2, 64), "M",
    (5, 128), (7, 128), "M",
    (10, 256), (12, 256), (14, 256), "M",
    (17, 512), (19, 512), (21, 512), "M",
    (24, 512), (26, 512), (28, 512),
)  # fmt: skip
# Indices of the convs whose ReLU outputs LPIPS compares (relu1_2 ... relu5_3).
LPIPS_TAPS = (2, 7, 14, 21, 28)
LPIPS_CHANNELS = (64, 128, 256, 512, 512)

SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """torchvision VGG16 `features` (convs 3x3 pad 1 + ReLU, 2x2 max-pools); returns the LPIPS taps."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for layer in VGG16_LAYOUT:
            if layer == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            index, channels = layer
            x = nn.Conv(channels, (3, 3), padding=1, precision=self.precision, name=f"features_{index}")(x)
            x = nn.relu(x)
            if index in LPIPS_TAPS:
                taps.append(x)
        return taps


def _unit_normalize(features: jax.Array, eps: float = 1e-10) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(features**2, axis=-1, keepdims=True))
    return features / (norm + eps)


class LPIPS(nn.Module):
    """Per-image LPIPS distance between two NHWC batches in [0, 1]."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, a: jax.Array, b: jax.Array) -> jax.Array:
        if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
            raise ValueError(f"LPIPS expects two RGB NHWC batches of equal shape, got {a.shape} and {b.shape}")
        shift = jnp.asarray(SCALING_SHIFT, jnp.float32)
        scale = jnp.asarray(SCALING_SCALE, jnp.float32)
        # One VGG pass over both batches.
        x = jnp.concatenate([a, b], axis=0).astype(jnp.float32)
        x = ((2.0 * x - 1.0) - shift) / scale
        taps = VGG16Features(precision=self.precision, name="vgg")(x)
        distance = jnp.zeros(a.shape[0], jnp.float32)
        for k, features in enumerate(taps):
            feats_a, feats_b = jnp.split(_unit_normalize(features), 2, axis=0)
            weighted = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name=f"lin{k}")(
                (feats_a - feats_b) ** 2
            )
            distance = distance + weighted.mean(axis=(1, 2, 3))
        return distance


def lpips_distance(variables, a: jax.Array, b: jax.Array) -> jax.Array:
    """LPIPS per image, shape (N,), for NHWC batches in [0, 1]; jit-able."""
    return LPIPS().apply(variables, a, b)


def abstract_lpips_variables():
    """Shapes and dtypes of the variables (no computation)."""
    dummy = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(LPIPS().init, jax.random.key(0), dummy, dummy)


def init_lpips_variables(key: jax.Array, image_size: int = 64):
    """Randomly initialised variables with the converted layout (for tests and benchmarks)."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(LPIPS().init)(key, dummy, dummy)
