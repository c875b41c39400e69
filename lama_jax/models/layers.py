"""Convolution and BatchNorm layers with PyTorch's exact semantics, in NHWC.

Flax's built-in layers differ from PyTorch in ways that break parity with LaMa:
`nn.Conv` only zero-pads, `nn.ConvTranspose` with "SAME" padding is shifted
relative to PyTorch's (k=3, s=2, p=1, output_padding=1), and `nn.BatchNorm`
updates its running variance with the biased batch variance. These layers fix
all three while keeping parameters in a plain `{"params", "batch_stats"}` tree.

Kernels are stored HWIO (`(kh, kw, in, out)`). Computation runs in `dtype`
(float32 or bfloat16); parameters and BatchNorm statistics stay float32.
"""

import functools
from typing import Any, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default init for conv weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
# i.e. kaiming_uniform(a=sqrt(5)).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


_NHWC = ("NHWC", "HWIO", "NHWC")
Padding = Tuple[Tuple[int, int], Tuple[int, int]]

# ------------------------------------------------------------------------------------------
# Convolutions that XLA:CPU runs fast.
#
# Measured on 2 cores, XLA:CPU has slow paths for shapes that are mathematically
# the same work:
# - a convolution without padding, or padded on one side only, runs 1.3-3x
#   slower than one padded on both sides (25x for 64 -> 3 channels), worst with
#   batch > 1. `_xla_conv` pads every side by at least the stride and crops the
#   extra output, so reflect-padded layers (padding done before the conv) and
#   strided ones stay on the fast path;
# - a 1x1 convolution runs 1.5-2x slower than the matrix product;
# - a convolution's kernel gradient (a convolution whose window is the whole
#   output map) and anything derived from input-dilated convolutions run an
#   order of magnitude slower than the same arithmetic as matrix products (the
#   512->512 4x4 kernel gradient at 17x17: 4 s instead of 0.05 s).
# `conv2d` therefore defines the gradients itself: the input gradient is again a
# stride-1 `conv2d` (so second derivatives, as in the R1 penalty, stay on this
# path) and the kernel gradient is one matrix product per kernel tap (with few
# channels on either side: one GEMM over im2col-expanded taps, or XLA's own for
# the 4-channel 7x7 stem). Stride-2 gradients
# run as stride-1 ones on a space-to-depth input. Results equal XLA's up to
# float rounding (tests/test_layers.py). Other backends use XLA's own
# convolutions, with one exception on some TPUs (`_tpu_stride2_pullback`).


def _xla_conv(x: jax.Array, kernel: jax.Array, strides: int, padding: Padding) -> jax.Array:
    """XLA's convolution, shaped the way XLA:CPU runs fastest (see above)."""
    if kernel.shape[:2] == (1, 1) and strides == 1 and padding == ((0, 0), (0, 0)):
        return x @ kernel[0, 0]
    # Both sides padded to at least the stride; extra zeros in multiples of the stride add whole
    # output rows and columns, cropped below. (conv2d calls stride 2 only unpadded.)
    extra = [(max(lo, hi, strides) - lo, max(lo, hi, strides) - hi) for lo, hi in padding]
    if any(e % strides for pair in extra for e in pair):
        raise ValueError(f"_xla_conv: padding {padding} at stride {strides} would misalign the output")
    y = jax.lax.conv_general_dilated(x, kernel, (strides, strides),
                                     [(lo + e_lo, hi + e_hi) for (lo, hi), (e_lo, e_hi) in zip(padding, extra)],
                                     dimension_numbers=_NHWC)
    (top, bottom), (left, right) = [(e_lo // strides, e_hi // strides) for e_lo, e_hi in extra]
    return y[:, top:y.shape[1] - bottom, left:y.shape[2] - right]


def _expand_taps(x: jax.Array, kh: int, kw: int, out_h: int, out_w: int) -> jax.Array:
    """(B, H, W, C) -> (B, out_h, out_w, kh*kw*C): tap (i, j) is x[:, i:i+out_h, j:j+out_w] (im2col)."""
    return jnp.concatenate([x[:, i:i + out_h, j:j + out_w] for i in range(kh) for j in range(kw)], axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stride1(x: jax.Array, kernel: jax.Array, padding: Padding) -> jax.Array:
    return _xla_conv(x, kernel, 1, padding)


def _conv_stride1_fwd(x, kernel, padding):
    return _conv_stride1(x, kernel, padding), (x, kernel)


def _conv_stride1_bwd(padding, residuals, dy):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    (top, bottom), (left, right) = padding
    # Input gradient: correlate dy with the flipped, in/out-swapped kernel (itself a _conv_stride1,
    # so a second derivative, as in R1, stays on the fast path).
    dx = _conv_stride1(dy, jnp.flip(kernel, (0, 1)).swapaxes(2, 3),
                       ((kh - 1 - top, kh - 1 - bottom), (kw - 1 - left, kw - 1 - right)))
    padded = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = dy.shape[1:3]
    if min(cin, cout) >= 16:
        # One matrix product per tap: dkernel[i, j] = taps(i, j)^T dy over all output pixels. On an
        # AVX-512 Xeon, 2 cores: 4.4x XLA's kernel gradient for 512->512 3x3 at 64^2, 4.9x for
        # 128->384 at 32^2 and batch 4 (big-lama's generator fwd+bwd at batch 4: 1.25x), equal at batch 1.
        dy_rows = dy.reshape(-1, cout)
        dkernel = jnp.stack([padded[:, i:i + out_h, j:j + out_w].reshape(-1, cin).T @ dy_rows
                             for i in range(kh) for j in range(kw)])
        return dx.astype(x.dtype), dkernel.reshape(kh, kw, cin, cout).astype(kernel.dtype)
    if kh == kw and kh % 2 and kh > 1 and cout >= 16:
        # XLA's own kernel gradient of the padded convolution (the generator's 7x7 stem from 4
        # channels): faster than the GEMMs below there, far slower with many input channels.
        _, kernel_pullback = jax.vjp(lambda k: _xla_conv(x, k, 1, padding), kernel)
        (dkernel,) = kernel_pullback(dy)
        return dx.astype(x.dtype), dkernel.astype(kernel.dtype)
    if cout < cin:
        # dkernel[i, j, c, o] = sum_p padded[p, c] dy[p - (i, j), o]: expand dy into shifted copies.
        # (Spelled with reversed slices: the direct slices ran 3x slower on XLA:CPU.)
        shifted = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
        taps = _expand_taps(shifted[:, ::-1, ::-1], kh, kw, *padded.shape[1:3])[:, ::-1, ::-1]
        dkernel = jnp.einsum("bhwc,bhwn->cn", padded, taps).reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)
    else:
        taps = _expand_taps(padded, kh, kw, out_h, out_w)
        dkernel = jnp.einsum("bhwn,bhwo->no", taps, dy).reshape(kh, kw, cin, cout)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_conv_stride1.defvjp(_conv_stride1_fwd, _conv_stride1_bwd)


def _space_to_depth_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-2 conv as a stride-1 conv over 2x2 pixel blocks (kernel zero-padded to even size)."""
    batch, height, width, cin = x.shape
    kh, kw, _, cout = kernel.shape
    out_h, out_w = (height - kh) // 2 + 1, (width - kw) // 2 + 1
    kernel = jnp.pad(kernel, ((0, kh % 2), (0, kw % 2), (0, 0), (0, 0)))
    x = jnp.pad(x, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)))
    blocks_h, blocks_w = x.shape[1] // 2, x.shape[2] // 2
    x = x.reshape(batch, blocks_h, 2, blocks_w, 2, cin).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(batch, blocks_h, blocks_w, 4 * cin)
    kh2, kw2 = kernel.shape[0] // 2, kernel.shape[1] // 2
    kernel = kernel.reshape(kh2, 2, kw2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5).reshape(kh2, kw2, 4 * cin, cout)
    return _conv_stride1(x, kernel, ((0, 0), (0, 0)))[:, :out_h, :out_w]


@jax.custom_vjp
def _odd_conv_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """VALID stride-2 conv with an odd kernel: XLA's forward, gradients of the space-to-depth form.

    Space-to-depth pads a 3x3 kernel to 4x4 (16/9 of the work), so XLA's own
    strided forward is ~1.8x faster; its gradients are the slow ones.
    """
    return _xla_conv(x, kernel, 2, ((0, 0), (0, 0)))


def _odd_conv_stride2_fwd(x, kernel):
    return _odd_conv_stride2(x, kernel), (x, kernel)


def _odd_conv_stride2_bwd(residuals, dy):
    _, pullback = jax.vjp(_space_to_depth_conv, *residuals)  # its unused forward is dead code to XLA
    return pullback(dy)


_odd_conv_stride2.defvjp(_odd_conv_stride2_fwd, _odd_conv_stride2_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: int = 1, padding: Padding = ((0, 0), (0, 0)),
           dilation: int = 1, tpu_phase_input_grad: bool = False) -> jax.Array:
    """NHWC/HWIO convolution with zero `padding`; on CPU with fast gradients (see above).

    The path is chosen per platform when the program is lowered, so an artifact
    exported for several platforms carries each its own. `tpu_phase_input_grad`: in
    TPU programs, a stride-2 input gradient by phases (`_tpu_stride2_pullback`).
    """
    if dilation != 1 or strides not in (1, 2):
        return _xla_default_conv(x, kernel, strides, padding, dilation)
    return _per_platform_conv(x, kernel, strides, padding, tpu_phase_input_grad and strides == 2)


def _xla_default_conv(x, kernel, strides, padding, dilation=1):
    return jax.lax.conv_general_dilated(x, kernel, (strides, strides), padding,
                                        rhs_dilation=(dilation, dilation), dimension_numbers=_NHWC)


# Differentiating `platform_dependent` itself (a switch) made XLA:CPU's gradients 10x slower;
# behind a custom VJP each direction is a switch of its own, resolved when lowered.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _per_platform_conv(x, kernel, strides, padding, tpu_phase_input_grad):
    return jax.lax.platform_dependent(x, kernel, cpu=functools.partial(_cpu_conv, strides=strides, padding=padding),
                                      default=functools.partial(_xla_default_conv, strides=strides, padding=padding))


def _per_platform_conv_fwd(x, kernel, strides, padding, tpu_phase_input_grad):
    return _per_platform_conv(x, kernel, strides, padding, tpu_phase_input_grad), (x, kernel)


def _per_platform_conv_bwd(strides, padding, tpu_phase_input_grad, residuals, dy):
    def pullback(conv):
        def apply(x, kernel, dy):
            return jax.vjp(functools.partial(conv, strides=strides, padding=padding), x, kernel)[1](dy)
        return apply

    tpu = {"tpu": functools.partial(_tpu_stride2_pullback, padding)} if tpu_phase_input_grad else {}
    return jax.lax.platform_dependent(*residuals, dy, cpu=pullback(_cpu_conv), default=pullback(_xla_default_conv),
                                      **tpu)


# TPU, where asked (the discriminator on the chips of `platform.TPU_PHASE_INPUT_GRAD`): the input
# gradient of a stride-2 convolution by phases. XLA writes it as an input-dilated convolution, and
# R1's double backward through the discriminator takes that one's kernel gradient, which aborts
# the TPU v4 and v5p compilers (libtpu 0.0.50.1: "Check failed: (window.base_bounds[i] +
# window.pad_high[i]) % window.strides[i] == 0" in ReverseInput). Four stride-1 convolutions, one
# per output phase, are the same sums without the inserted zeros, and their derivatives are
# stride-1 convolutions again. Not the default: v5e's compiler gives the phases twice the HBM traffic.
def _tpu_stride2_pullback(padding, x, kernel, dy):
    _, kernel_pullback = jax.vjp(lambda k: _xla_default_conv(x, k, 2, padding), kernel)
    (dkernel,) = kernel_pullback(dy)
    return _stride2_input_gradient(dy, kernel, padding, x.shape), dkernel


def _stride2_input_gradient(dy, kernel, padding, input_shape):
    """A stride-2 conv's input gradient as four stride-1 convs, one per phase, interleaved.

    Padded input row 2m + r meets kernel rows r, r + 2, ... at output rows m, m - 1, ...: a
    stride-1 convolution of dy with those kernel rows, flipped (likewise for columns).
    """
    batch, height, width, cin = input_shape
    (top, bottom), (left, right) = padding
    rows, cols = -(-(height + top + bottom) // 2), -(-(width + left + right) // 2)
    phases = []
    for r in (0, 1):
        for c in (0, 1):
            sub = kernel[r::2, c::2]
            th, tw = sub.shape[:2]
            if not th or not tw:
                phases.append(jnp.zeros((batch, rows, cols, cin), dy.dtype))
                continue
            phases.append(jax.lax.conv_general_dilated(
                dy, jnp.flip(sub, (0, 1)).swapaxes(2, 3), (1, 1),
                ((th - 1, rows - dy.shape[1]), (tw - 1, cols - dy.shape[2])), dimension_numbers=_NHWC))
    dx = jnp.stack(phases).reshape(2, 2, batch, rows, cols, cin).transpose(2, 3, 0, 4, 1, 5)
    dx = dx.reshape(batch, 2 * rows, 2 * cols, cin)
    return dx[:, top:top + height, left:left + width]


_per_platform_conv.defvjp(_per_platform_conv_fwd, _per_platform_conv_bwd)


def _cpu_conv(x: jax.Array, kernel: jax.Array, strides: int, padding: Padding) -> jax.Array:
    if strides == 1:
        return _conv_stride1(x, kernel, padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    if kernel.shape[:2] == (1, 1):
        return _conv_stride1(x[:, ::2, ::2], kernel, ((0, 0), (0, 0)))
    if kernel.shape[0] % 2 and kernel.shape[1] % 2:
        return _odd_conv_stride2(x, kernel)
    return _space_to_depth_conv(x, kernel)


class Conv2d(nn.Module):
    """2-D convolution with PyTorch padding modes ("zeros" or "reflect").

    Reflect padding mirrors without repeating the edge sample (PyTorch/NumPy
    "reflect"), which every generator conv of LaMa uses.
    """

    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    dilation: int = 1
    padding_mode: str = "zeros"
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    tpu_phase_input_grad: bool = False  # see conv2d

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        k = self.kernel_size
        kernel = self.param("kernel", torch_default_init, (k, k, in_features, self.features), jnp.float32)
        p = self.padding
        if p and self.padding_mode == "reflect":
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
            conv_padding = ((0, 0), (0, 0))
        elif self.padding_mode in ("zeros", "reflect"):
            conv_padding = ((p, p), (p, p))
        else:
            raise ValueError(f"Conv2d: unknown padding_mode {self.padding_mode!r}")
        y = conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.strides, conv_padding, self.dilation,
                   self.tpu_phase_input_grad)
        if self.use_bias:
            bias = self.param("bias", _torch_bias_init(in_features * k * k), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class ConvTranspose2d(nn.Module):
    """PyTorch ConvTranspose2d(k=3, stride=2, padding=1, output_padding=1): doubles H and W.

    Mathematically a 3x3 convolution over the input dilated by 2 and padded
    (1 before, 2 after); the kernel is stored as that convolution's HWIO
    kernel, i.e. the PyTorch weight spatially flipped (the converter does it).
    It is computed sub-pixel: output pixel (2i+a, 2j+b) only meets the taps of
    its phase (a, b), so one 2x2 convolution producing the four phases, then a
    depth-to-space shuffle, does the same arithmetic without multiplying the
    inserted zeros. XLA's CPU kernels for input-dilated convolutions (and
    their gradients) are an order of magnitude slower than this.
    """

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, height, width, in_features = x.shape
        # PyTorch computes the transposed conv's fan_in from weight dim 1 (= out * k * k).
        fan_in = self.features * 9
        init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
        kernel = self.param("kernel", init, (3, 3, in_features, self.features), jnp.float32)

        # Even output rows use tap 1 of the dilated kernel at input offset 0; odd rows use
        # tap 0 at offset 0 and tap 2 at offset 1 (likewise for columns).
        zeros = jnp.zeros_like(kernel[0])

        def taps(phase, offset):
            return (1, None)[offset] if phase == 0 else (0, 2)[offset]

        phase_kernels = []
        for a in (0, 1):
            for b in (0, 1):
                rows = []
                for dy in (0, 1):
                    cols = []
                    for dx in (0, 1):
                        ky, kx = taps(a, dy), taps(b, dx)
                        cols.append(zeros[0] if ky is None or kx is None else kernel[ky, kx])
                    rows.append(jnp.stack(cols))
                phase_kernels.append(jnp.stack(rows))  # (2, 2, in, out)
        combined = jnp.concatenate(phase_kernels, axis=-1)  # (2, 2, in, 4 * out), phase-major

        y = conv2d(x.astype(self.dtype), combined.astype(self.dtype), padding=((0, 1), (0, 1)))
        y = y.reshape(batch, height, width, 2, 2, self.features)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(batch, 2 * height, 2 * width, self.features)
        if self.use_bias:
            bias = self.param("bias", _torch_bias_init(fan_in), (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """BatchNorm2d with PyTorch's conventions (eps 1e-5, momentum 0.1).

    Training normalises with the biased batch variance but updates
    `running_var` with the unbiased one (x N/(N-1)), exactly as PyTorch does.

    `groups` splits the batch into that many contiguous slices with their own
    statistics: with the batch sharded over G devices this reproduces
    PyTorch DDP without SyncBatchNorm (per-GPU statistics). The running
    statistics then move by the mean of the per-slice updates. `groups=1`
    is one statistic over the whole (global) batch.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    groups: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)

        if not train:
            inv = scale * jax.lax.rsqrt(running_var.value + self.epsilon)
            shift = bias - running_mean.value * inv
            return x * inv.astype(self.dtype) + shift.astype(self.dtype)

        batch = x.shape[0]
        if batch % self.groups:
            raise ValueError(f"BatchNorm: batch {batch} is not divisible into {self.groups} statistic groups")
        grouped = x.astype(jnp.float32).reshape(self.groups, batch // self.groups, *x.shape[1:])
        reduce_axes = tuple(range(1, grouped.ndim - 1))
        mean = grouped.mean(axis=reduce_axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=reduce_axes, keepdims=True)
        inv = jax.lax.rsqrt(var + self.epsilon) * scale
        y = ((grouped - mean) * inv + bias).reshape(x.shape)

        if not self.is_initializing():
            count = grouped[0].size // features
            batch_mean = mean.reshape(self.groups, features).mean(axis=0)
            unbiased_var = var.reshape(self.groups, features).mean(axis=0) * (count / max(count - 1, 1))
            m = self.momentum
            running_mean.value = (1 - m) * running_mean.value + m * batch_mean
            running_var.value = (1 - m) * running_var.value + m * unbiased_var
        return y.astype(self.dtype)


def leaky_relu(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, negative_slope=0.2)


def reflect_pad(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")


def split_channels(channels: int, ratio: float) -> Sequence[int]:
    """LaMa's local/global split: global = floor(C * ratio), local = the rest."""
    global_channels = int(channels * ratio)
    return channels - global_channels, global_channels
