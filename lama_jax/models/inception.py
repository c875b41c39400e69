"""pytorch-fid's InceptionV3 (TF FID weights) up to the 2048-d pool3 features, in Flax (NHWC).

This is the network LaMa's FID uses: torchvision's Inception3 layout with the
"FID" variants of the mixed blocks that reproduce TensorFlow's 2015 graph:
the 3x3 average pools inside Mixed_5b-d, Mixed_6b-e and Mixed_7b exclude the
zero padding from the count, and Mixed_7c's pool branch is a 3x3 max-pool.
Each conv is bias-free and followed by BatchNorm (eps 1e-3, running statistics)
and ReLU.

Input: NHWC in [0, 1] of any size. It is resized to 299x299 bilinearly with
half-pixel centres and no antialiasing (PyTorch's `F.interpolate(...,
align_corners=False)`), mapped to [-1, 1], and reduced to (N, 2048).

Module names match the keys of `pt_inception-2015-12-05-6726825d.pth`
(`Mixed_5b.branch1x1.conv.weight` is `Mixed_5b/branch1x1/conv/kernel` here), so
`lama_jax.eval_weights` converts it by renaming and transposing.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INCEPTION_SIZE = 299
BN_EPS = 1e-3


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running stats) -> ReLU; torchvision's BasicConv2d."""

    features: int
    kernel_size: int | tuple[int, int]
    strides: int = 1
    padding: int | tuple[int, int] = 0
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad_h, pad_w = _pair(self.padding)
        x = nn.Conv(
            self.features,
            _pair(self.kernel_size),
            strides=_pair(self.strides),
            padding=((pad_h, pad_h), (pad_w, pad_w)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_exclude_pad(x: jax.Array) -> jax.Array:
    # TensorFlow's average pool divides by the number of real (unpadded) pixels.
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
    pool_features: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(64, 1, name="branch1x1")(x)
        branch5x5 = conv(48, 1, name="branch5x5_1")(x)
        branch5x5 = conv(64, 5, padding=2, name="branch5x5_2")(branch5x5)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_3")(branch3x3dbl)
        branch_pool = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch3x3 = conv(384, 3, strides=2, name="branch3x3")(x)
        branch3x3dbl = conv(64, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(96, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = conv(96, 3, strides=2, name="branch3x3dbl_3")(branch3x3dbl)
        return jnp.concatenate([branch3x3, branch3x3dbl, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
    channels_7x7: int
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        branch1x1 = conv(192, 1, name="branch1x1")(x)
        branch7x7 = conv(c7, 1, name="branch7x7_1")(x)
        branch7x7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(branch7x7)
        branch7x7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(branch7x7)
        branch7x7dbl = conv(c7, 1, name="branch7x7dbl_1")(x)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(branch7x7dbl)
        branch7x7dbl = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(branch7x7dbl)
        branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(branch7x7dbl)
        branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(branch7x7dbl)
        branch_pool = conv(192, 1, name="branch_pool")(_avg_pool_3x3_exclude_pad(x))
        return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch3x3 = conv(192, 1, name="branch3x3_1")(x)
        branch3x3 = conv(320, 3, strides=2, name="branch3x3_2")(branch3x3)
        branch7x7x3 = conv(192, 1, name="branch7x7x3_1")(x)
        branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(branch7x7x3)
        branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(branch7x7x3)
        branch7x7x3 = conv(192, 3, strides=2, name="branch7x7x3_4")(branch7x7x3)
        return jnp.concatenate([branch3x3, branch7x7x3, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
    """InceptionE; `pool` is "avg" (Mixed_7b, padding excluded) or "max" (Mixed_7c)."""

    pool: str
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        branch1x1 = conv(320, 1, name="branch1x1")(x)
        branch3x3 = conv(384, 1, name="branch3x3_1")(x)
        branch3x3 = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(branch3x3),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(branch3x3),
            ],
            axis=-1,
        )
        branch3x3dbl = conv(448, 1, name="branch3x3dbl_1")(x)
        branch3x3dbl = conv(384, 3, padding=1, name="branch3x3dbl_2")(branch3x3dbl)
        branch3x3dbl = jnp.concatenate(
            [
                conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(branch3x3dbl),
                conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(branch3x3dbl),
            ],
            axis=-1,
        )
        if self.pool == "avg":
            pooled = _avg_pool_3x3_exclude_pad(x)
        elif self.pool == "max":
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"FIDInceptionE pool must be 'avg' or 'max', got {self.pool!r}")
        branch_pool = conv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


def resize_bilinear(images: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
    """PyTorch `F.interpolate(mode="bilinear", align_corners=False)`: half-pixel, no antialiasing."""
    n, _, _, c = images.shape
    return jax.image.resize(images, (n, size, size, c), method="bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
    """Images (N, H, W, 3) in [0, 1] -> pool3 features (N, 2048)."""

    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"FIDInceptionV3 expects an RGB NHWC batch, got shape {images.shape}")
        p = self.precision
        x = resize_bilinear(images.astype(jnp.float32))
        x = 2.0 * x - 1.0
        x = BasicConv2d(32, 3, strides=2, precision=p, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, 3, precision=p, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, 3, padding=1, precision=p, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        x = BasicConv2d(80, 1, precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, 3, precision=p, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_stride2(x)
        x = FIDInceptionA(32, precision=p, name="Mixed_5b")(x)
        x = FIDInceptionA(64, precision=p, name="Mixed_5c")(x)
        x = FIDInceptionA(64, precision=p, name="Mixed_5d")(x)
        x = InceptionB(precision=p, name="Mixed_6a")(x)
        x = FIDInceptionC(128, precision=p, name="Mixed_6b")(x)
        x = FIDInceptionC(160, precision=p, name="Mixed_6c")(x)
        x = FIDInceptionC(160, precision=p, name="Mixed_6d")(x)
        x = FIDInceptionC(192, precision=p, name="Mixed_6e")(x)
        x = InceptionD(precision=p, name="Mixed_7a")(x)
        x = FIDInceptionE("avg", precision=p, name="Mixed_7b")(x)
        x = FIDInceptionE("max", precision=p, name="Mixed_7c")(x)
        return x.mean(axis=(1, 2))


def inception_features(variables, images: jax.Array) -> jax.Array:
    """pool3 features (N, 2048) of NHWC images in [0, 1]; jit-able."""
    return FIDInceptionV3().apply(variables, images)


def abstract_inception_variables():
    """Shapes and dtypes of the variables (no computation)."""
    dummy = jax.ShapeDtypeStruct((1, INCEPTION_SIZE, INCEPTION_SIZE, 3), jnp.float32)
    return jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), dummy)


def init_inception_variables(key: jax.Array):
    """Random variables with the converted layout, for tests and benchmarks.

    He-normal kernels and identity BatchNorms keep activations O(1) through the
    94 convs. Built from the abstract shapes: compiling Flax's `init` for this
    network takes longer (~12 s on CPU) than evaluating a small set.
    """
    flat = flax.traverse_util.flatten_dict(abstract_inception_variables())
    kernel_paths = [path for path in flat if path[-1] == "kernel"]
    # One draw for all kernels: a separate draw per shape would compile ~100 RNG programs.
    noise = np.asarray(jax.random.normal(key, (sum(math.prod(flat[p].shape) for p in kernel_paths),)))
    variables, offset = {}, 0
    for path, leaf in flat.items():
        if path[-1] == "kernel":
            size = math.prod(leaf.shape)
            fan_in = size // leaf.shape[-1]
            variables[path] = noise[offset : offset + size].reshape(leaf.shape) * math.sqrt(2.0 / fan_in)
            offset += size
        elif path[-1] in ("scale", "var"):
            variables[path] = np.ones(leaf.shape, np.float32)
        else:  # BatchNorm bias and running mean
            variables[path] = np.zeros(leaf.shape, np.float32)
    return flax.traverse_util.unflatten_dict(variables)
