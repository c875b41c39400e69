"""The Fourier units' 2-D real FFT written as matrix products, for artifacts of any image size.

StableHLO's `fft` op takes static lengths, so `jnp.fft.rfft2` cannot be lowered
with a symbolic height or width (`jax.export` refuses it). The same transforms
as dense DFT matrices are ordinary `dot_general`s whose matrices are built from
`iota` of the (possibly symbolic) sizes, so a generator using them exports once
for every size. They compute what `jnp.fft.rfft2` / `irfft2` with
`norm="ortho"` compute over axes (1, 2) of NHWC maps, including odd widths and
the c2r convention that ignores the imaginary parts of the DC and Nyquist bins.

The cost is O(H·W·(H+W)) per channel instead of O(H·W·log(H·W)); the Fourier
units run at 1/8 of the image size (64x64 for a 512² image), where that is
small next to the 3x3 convolutions.
"""

import jax
import jax.numpy as jnp

# Full float32 products: TPUs would otherwise multiply in bfloat16.
_PRECISION = jax.lax.Precision.HIGHEST


def _twiddles(frequencies, length):
    """cos and sin of 2π·k·n/length for k in `frequencies` (rows) and n < length (columns).

    The phase index k·n is reduced modulo `length` in integers first, so the
    angles stay exact for large sizes.
    """
    positions = jnp.arange(length, dtype=jnp.int32)
    phase = (frequencies[:, None] * positions[None, :]) % length
    angle = phase.astype(jnp.float32) * (2 * jnp.pi / length)
    return jnp.cos(angle), jnp.sin(angle)


def _contract(matrix, x, axis):
    """y[..., k, ...] = Σ_n matrix[k, n] · x[..., n, ...] along `axis` of x."""
    y = jnp.tensordot(x, matrix, axes=((axis,), (1,)), precision=_PRECISION)
    return jnp.moveaxis(y, -1, axis)


def rfft2(x: jax.Array):
    """(B, H, W, C) real -> (real, imag) of shape (B, H, W//2+1, C); `jnp.fft.rfft2(x, axes=(1, 2), norm="ortho")`."""
    height, width = x.shape[1], x.shape[2]
    x = x.astype(jnp.float32)
    cos_w, sin_w = _twiddles(jnp.arange(width // 2 + 1, dtype=jnp.int32), width)
    real, imag = _contract(cos_w, x, 2), -_contract(sin_w, x, 2)
    cos_h, sin_h = _twiddles(jnp.arange(height, dtype=jnp.int32), height)
    # (real + i·imag)·(cos - i·sin) along H.
    real, imag = (_contract(cos_h, real, 1) + _contract(sin_h, imag, 1),
                  _contract(cos_h, imag, 1) - _contract(sin_h, real, 1))
    scale = jax.lax.rsqrt(jnp.asarray(height * width, jnp.float32))
    return real * scale, imag * scale


def irfft2(real: jax.Array, imag: jax.Array, height, width) -> jax.Array:
    """Inverse of `rfft2`: (B, H, W//2+1, C) spectrum -> (B, H, W, C) real, as `jnp.fft.irfft2(..., s=(H, W))`."""
    cos_h, sin_h = _twiddles(jnp.arange(height, dtype=jnp.int32), height)
    # (real + i·imag)·(cos + i·sin) along H; cos_h and sin_h are symmetric.
    real, imag = (_contract(cos_h, real, 1) - _contract(sin_h, imag, 1),
                  _contract(cos_h, imag, 1) + _contract(sin_h, real, 1))
    # Hermitian completion along W: bins 0 and W/2 (even W) count once and their
    # imaginary parts are dropped; every other bin stands for itself and its mirror.
    frequencies = jnp.arange(width // 2 + 1, dtype=jnp.int32)
    self_conjugate = (frequencies == 0) | (2 * frequencies == width)
    weight = jnp.where(self_conjugate, 1.0, 2.0).astype(jnp.float32)
    cos_w, sin_w = _twiddles(frequencies, width)
    cos_w = cos_w * weight[:, None]
    sin_w = jnp.where(self_conjugate[:, None], 0.0, sin_w * weight[:, None])
    out = _contract(cos_w.T, real, 2) - _contract(sin_w.T, imag, 2)
    return out * jax.lax.rsqrt(jnp.asarray(height * width, jnp.float32))
