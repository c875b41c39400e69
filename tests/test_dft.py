"""The Fourier units' DFT-by-matrix-products path equals jnp.fft and lowers with symbolic sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax.models import dft


@pytest.mark.parametrize("shape", [(2, 16, 24, 3), (1, 7, 9, 2), (1, 5, 1, 1), (1, 1, 6, 2), (1, 96, 64, 2)])
def test_rfft2_and_irfft2_equal_jnp_fft(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    real, imag = dft.rfft2(x)
    expected = np.fft.rfft2(x.astype(np.float64), axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(real, expected.real, atol=3e-6)
    np.testing.assert_allclose(imag, expected.imag, atol=3e-6)

    # Any spectrum, not only a Hermitian one: the DC and Nyquist bins' imaginary parts must be ignored.
    spectrum = rng.normal(size=real.shape) + 1j * rng.normal(size=real.shape)
    out = dft.irfft2(spectrum.real.astype(np.float32), spectrum.imag.astype(np.float32), shape[1], shape[2])
    expected = np.fft.irfft2(spectrum, s=shape[1:3], axes=(1, 2), norm="ortho")
    np.testing.assert_allclose(out, expected, atol=3e-6)
    np.testing.assert_allclose(dft.irfft2(real, imag, shape[1], shape[2]), x, atol=3e-6)


def test_dft_lowers_with_symbolic_height_and_width():
    batch, height, width = jax.export.symbolic_shape("b, 8*h, 8*w")

    def round_trip(x):
        real, imag = dft.rfft2(x)
        return dft.irfft2(2 * real, imag, x.shape[1], x.shape[2])

    exported = jax.export.export(jax.jit(round_trip))(jax.ShapeDtypeStruct((batch, height, width, 3), jnp.float32))
    for shape in [(1, 16, 40, 3), (3, 24, 8, 3)]:
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        spectrum = np.fft.rfft2(x, axes=(1, 2), norm="ortho")
        expected = np.fft.irfft2(2 * spectrum.real + 1j * spectrum.imag, s=shape[1:3], axes=(1, 2), norm="ortho")
        np.testing.assert_allclose(exported.call(x), expected, atol=1e-5)
