"""layers.conv2d: XLA's convolution semantics with its own CPU gradients, to second order (R1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax.models import layers

CASES = [  # (kernel size, stride, padding, in channels, out channels)
    (3, 1, ((1, 1), (1, 1)), 5, 6),
    (3, 1, ((1, 1), (1, 1)), 5, 16),  # XLA's own kernel gradient
    (3, 1, ((1, 1), (1, 1)), 16, 24),  # one matrix product per kernel tap
    (3, 1, ((0, 0), (0, 0)), 5, 6),  # unpadded: run padded, then cropped
    (2, 1, ((0, 1), (0, 1)), 5, 6),  # one-sided, as in the sub-pixel transposed conv
    (7, 1, ((0, 0), (0, 0)), 4, 3),
    (1, 1, ((0, 0), (0, 0)), 5, 6),  # a matrix product
    (3, 2, ((1, 1), (1, 1)), 5, 6),  # odd kernel, stride 2: XLA forward, space-to-depth gradients
    (4, 2, ((2, 2), (2, 2)), 5, 6),  # even kernel, stride 2: space-to-depth throughout
    (4, 2, ((2, 2), (2, 2)), 5, 16),  # the same, 20 -> 16 channels after space-to-depth: per tap
    (1, 2, ((0, 0), (0, 0)), 5, 6),
]


def reference_conv(x, kernel, strides, padding):
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("size, strides, padding, cin, cout", CASES)
def test_conv2d_values_and_gradients_equal_xla(size, strides, padding, cin, cout):
    rng = np.random.default_rng(size * 10 + strides + cout)
    x = jnp.asarray(rng.normal(size=(2, 13, 11, cin)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(size, size, cin, cout)).astype(np.float32))
    probe = jnp.asarray(rng.normal(size=reference_conv(x, kernel, strides, padding).shape).astype(np.float32))

    def objective(conv):
        return lambda x, kernel: jnp.sum(conv(x, kernel, strides, padding) * probe)

    np.testing.assert_allclose(layers.conv2d(x, kernel, strides, padding), reference_conv(x, kernel, strides, padding),
                               rtol=1e-5, atol=1e-4)
    assert_gradients_and_r1_equal(objective(layers.conv2d), objective(reference_conv), x, kernel)


def assert_gradients_and_r1_equal(ours, expected, x, kernel):
    """Both gradients of two objectives f(x, kernel), and R1's shape: the squared input gradient,
    differentiated with respect to the kernel."""
    for got, want in zip(jax.grad(ours, (0, 1))(x, kernel), jax.grad(expected, (0, 1))(x, kernel)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)

    def penalty(objective):
        return lambda kernel: jnp.sum(jax.grad(objective)(x, kernel) ** 2)

    np.testing.assert_allclose(jax.grad(penalty(ours))(kernel), jax.grad(penalty(expected))(kernel),
                               rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("strides, padding", [(1, ((lo, hi), (hi, lo))) for lo in range(3) for hi in range(3)]
                         + [(2, ((0, 0), (0, 0)))])
def test_padded_and_cropped_convolution_equals_xla(strides, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 8, 3)).astype(np.float32)
    for size in (1, 2, 3):
        kernel = rng.normal(size=(size, size, 3, 4)).astype(np.float32)
        expected = reference_conv(x, kernel, strides, padding)
        np.testing.assert_allclose(layers._xla_conv(x, kernel, strides, padding), expected, rtol=1e-5, atol=1e-5)


def test_each_platform_of_an_export_gets_its_own_convolution_path():
    """A 1x1 convolution is a matrix product on CPU and XLA's convolution elsewhere, whichever
    machine exports: the choice is made per platform in the lowered program."""
    x, kernel = jnp.ones((1, 8, 8, 4)), jnp.ones((1, 1, 4, 5))

    def lowered_ops(platform):
        exported = jax.export.export(jax.jit(layers.conv2d), platforms=(platform,))(x, kernel)
        text = exported.mlir_module()
        return "stablehlo.convolution" in text, "stablehlo.dot_general" in text

    assert lowered_ops("cpu") == (False, True)
    assert lowered_ops("cuda") == (True, False)
    assert lowered_ops("tpu") == (True, False)


@pytest.mark.parametrize("size, padding, height, width", [
    (4, ((2, 2), (2, 2)), 13, 11),  # the discriminator's convolutions
    (4, ((2, 2), (2, 2)), 12, 12),
    (3, ((1, 1), (1, 1)), 13, 10),
    (3, ((0, 1), (1, 0)), 9, 8),  # one-sided padding
    (1, ((0, 0), (0, 0)), 9, 8),  # a phase with no taps
])
def test_tpu_stride2_gradient_equals_xla_to_second_order(size, padding, height, width):
    """TPU's stride-2 pullback (input gradient as four stride-1 convolutions, one per phase) is
    XLA's, for the gradients and for R1's gradient of the squared input gradient."""
    rng = np.random.default_rng(size + height)
    x = jnp.asarray(rng.normal(size=(2, height, width, 5)).astype(np.float32))
    kernel = jnp.asarray(rng.normal(size=(size, size, 5, 6)).astype(np.float32))
    probe = jnp.asarray(rng.normal(size=reference_conv(x, kernel, 2, padding).shape).astype(np.float32))

    @jax.custom_vjp
    def tpu_conv(x, kernel):
        return reference_conv(x, kernel, 2, padding)

    tpu_conv.defvjp(lambda x, kernel: (tpu_conv(x, kernel), (x, kernel)),
                    lambda residuals, dy: layers._tpu_stride2_pullback(padding, *residuals, dy))

    def objective(conv):
        return lambda x, kernel: jnp.sum(jax.nn.leaky_relu(conv(x, kernel), 0.2) * probe)

    assert_gradients_and_r1_equal(objective(tpu_conv), objective(lambda x, k: reference_conv(x, k, 2, padding)),
                                  x, kernel)


def test_tpu_phase_input_grad_takes_no_input_dilated_convolution_into_r1():
    """R1 through a stride-2 convolution lowered for TPU with `tpu_phase_input_grad`: its input
    gradient is stride-1 convolutions (XLA's input-dilated form aborts the TPU v4 and v5p
    compilers); without it, or lowered for another platform, XLA's form."""
    x, kernel = jnp.ones((1, 12, 12, 3)), jnp.ones((4, 4, 3, 8))

    def input_dilated_convolutions(platform, tpu_phase_input_grad):
        def penalty(kernel, x):
            grad = jax.grad(lambda x: jnp.sum(layers.conv2d(x, kernel, 2, ((2, 2), (2, 2)),
                                                            tpu_phase_input_grad=tpu_phase_input_grad) ** 2))(x)
            return jnp.sum(grad ** 2)

        text = jax.export.export(jax.jit(jax.grad(penalty)), platforms=(platform,))(kernel, x).mlir_module()
        return sum("lhs_dilat" in line for line in text.splitlines() if "stablehlo.convolution" in line)

    assert input_dilated_convolutions("tpu", True) == 0
    assert input_dilated_convolutions("tpu", False) > 0
    assert input_dilated_convolutions("cuda", True) > 0
