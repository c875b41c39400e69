"""Fast Fourier Convolution and LaMa's FFC-ResNet generator (NHWC).

An FFC carries a feature map as two streams: a *local* one processed by
ordinary 3x3 convolutions and a *global* one whose self-path is a
`SpectralTransform` — a 1x1 convolution applied in the 2-D Fourier domain,
so every output pixel sees the whole image. Streams that have zero channels
are `None` and own no parameters (the reference's identity placeholders).

Module and parameter names mirror the PyTorch state-dict keys so that
`lama_jax.convert` maps them one to one; the residual blocks are stacked
under `blocks` with a leading block axis (they run under `nn.scan`).
"""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from lama_jax.models import dft
from lama_jax.models.layers import BatchNorm, Conv2d, ConvTranspose2d, reflect_pad, split_channels

Dtype = Any
Streams = Tuple[Optional[jax.Array], Optional[jax.Array]]


class FourierUnit(nn.Module):
    """rfft2 (ortho) -> 1x1 conv over interleaved (re, im) channels -> BN -> ReLU -> irfft2.

    Channel 2c of the spectrum is Re F[c] and 2c+1 is Im F[c], as in the
    reference; the transforms always run in float32. `fft_impl` "fft" uses
    XLA's FFT; "dft" the same transforms as matrix products (`models.dft`),
    which `jax.export` can lower with a symbolic image size.
    """

    features: int
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        batch, height, width, channels = x.shape
        if self.fft_impl == "fft":
            spectrum = jnp.fft.rfft2(x.astype(jnp.float32), axes=(1, 2), norm="ortho")
            real, imag = spectrum.real, spectrum.imag
        elif self.fft_impl == "dft":
            real, imag = dft.rfft2(x)
        else:
            raise ValueError(f"FourierUnit: fft_impl must be 'fft' or 'dft', got {self.fft_impl!r}")
        freq_width = real.shape[2]
        stacked = jnp.stack([real, imag], axis=-1).reshape(batch, height, freq_width, 2 * channels)

        stacked = Conv2d(2 * self.features, 1, dtype=self.dtype, name="conv_layer")(stacked)
        stacked = BatchNorm(groups=self.bn_groups, dtype=self.dtype, name="bn")(stacked, train)
        stacked = nn.relu(stacked).astype(jnp.float32)

        pairs = stacked.reshape(batch, height, freq_width, self.features, 2)
        if self.fft_impl == "dft":
            out = dft.irfft2(pairs[..., 0], pairs[..., 1], height, width)
        else:
            # s=(H, W) is required for odd widths.
            out = jnp.fft.irfft2(jax.lax.complex(pairs[..., 0], pairs[..., 1]), s=(height, width), axes=(1, 2),
                                 norm="ortho")
        return out.astype(self.dtype)


class SpectralTransform(nn.Module):
    """The global-to-global path: 1x1 conv+BN+ReLU, FourierUnit (+ optional LFU), 1x1 conv.

    The local Fourier unit (LFU) applies a second FourierUnit to the first
    quarter of the channels cut into 2x2 spatial quadrants stacked on the
    channel axis, then tiles its output back over the image.
    """

    features: int
    strides: int = 1
    enable_lfu: bool = False
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.strides == 2:
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        hidden = self.features // 2
        x = Conv2d(hidden, 1, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name="bn1")(x, train))
        out = FourierUnit(hidden, self.bn_groups, self.dtype, self.fft_impl, name="fu")(x, train)

        total = x + out
        if self.enable_lfu:
            _, height, width, channels = x.shape
            if height != width or height % 2:
                raise ValueError(
                    f"SpectralTransform: the LFU needs a square map with an even side, got {height}x{width} "
                    "(the reference has the same restriction)"
                )
            half = height // 2
            quarter = x[..., : channels // 4]
            # Channel order of the reference: W-left (H-top, H-bottom), then W-right (H-top, H-bottom).
            rows = jnp.concatenate([quarter[:, :half], quarter[:, half:]], axis=-1)
            quadrants = jnp.concatenate([rows[:, :, :half], rows[:, :, half:]], axis=-1)
            local = FourierUnit(hidden, self.bn_groups, self.dtype, self.fft_impl, name="lfu")(quadrants, train)
            total = total + jnp.tile(local, (1, 2, 2, 1))
        return Conv2d(self.features, 1, dtype=self.dtype, name="conv2")(total)


class FFC(nn.Module):
    """Four paths between the local (l) and global (g) streams.

    y_l = l2l(x_l) + g2l(x_g);  y_g = l2g(x_l) + g2g(x_g), with g2g spectral.
    """

    features: int
    ratio_gin: float
    ratio_gout: float
    kernel_size: int
    strides: int = 1
    padding: int = 0
    dilation: int = 1
    enable_lfu: bool = False
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"

    @nn.compact
    def __call__(self, streams: Streams, train: bool) -> Streams:
        x_l, x_g = streams
        out_local, out_global = split_channels(self.features, self.ratio_gout)

        def spatial_conv(features, name):
            return Conv2d(
                features, self.kernel_size, self.strides, self.padding, self.dilation,
                padding_mode="reflect", dtype=self.dtype, name=name,
            )

        def add(a, b):
            return b if a is None else (a if b is None else a + b)

        y_l = y_g = None
        if out_local:
            if x_l is not None:
                y_l = spatial_conv(out_local, "convl2l")(x_l)
            if x_g is not None:
                y_l = add(y_l, spatial_conv(out_local, "convg2l")(x_g))
        if out_global:
            if x_l is not None:
                y_g = spatial_conv(out_global, "convl2g")(x_l)
            if x_g is not None:
                spectral = SpectralTransform(
                    out_global, self.strides, self.enable_lfu, self.bn_groups, self.dtype, self.fft_impl,
                    name="convg2g",
                )
                y_g = add(y_g, spectral(x_g, train))
        return y_l, y_g


class FFCBnAct(nn.Module):
    """FFC followed by BatchNorm and ReLU on each stream that exists (FFC_BN_ACT)."""

    features: int
    ratio_gin: float
    ratio_gout: float
    kernel_size: int
    strides: int = 1
    padding: int = 0
    dilation: int = 1
    enable_lfu: bool = False
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"

    @nn.compact
    def __call__(self, streams: Streams, train: bool) -> Streams:
        y_l, y_g = FFC(
            self.features, self.ratio_gin, self.ratio_gout, self.kernel_size, self.strides,
            self.padding, self.dilation, self.enable_lfu, self.bn_groups, self.dtype, self.fft_impl, name="ffc",
        )(streams, train)
        if y_l is not None:
            y_l = nn.relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name="bn_l")(y_l, train))
        if y_g is not None:
            y_g = nn.relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name="bn_g")(y_g, train))
        return y_l, y_g


class FFCResnetBlock(nn.Module):
    """Two 3x3 FFC_BN_ACT layers with an identity residual on both streams (no activation after the add)."""

    features: int
    ratio: float = 0.75
    enable_lfu: bool = False
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"

    @nn.compact
    def __call__(self, streams: Streams, train: bool) -> Streams:
        def conv(name):
            return FFCBnAct(
                self.features, self.ratio, self.ratio, 3, padding=1, enable_lfu=self.enable_lfu,
                bn_groups=self.bn_groups, dtype=self.dtype, fft_impl=self.fft_impl, name=name,
            )

        y_l, y_g = conv("conv2")(conv("conv1")(streams, train), train)
        x_l, x_g = streams
        return x_l + y_l, x_g + y_g


class FFCResNetGenerator(nn.Module):
    """LaMa's generator: reflect-pad + 7x7 FFC, strided FFCs, FFC residual blocks, transposed-conv decoder.

    Input: NHWC with 4 channels, `image * (1 - mask)` then `mask`; H and W multiples of
    2**n_downsampling. Output: sigmoid RGB of the same size. `fft_impl="dft"` computes
    the Fourier units by matrix products, so `jax.export` accepts a symbolic H and W.
    """

    ngf: int = 64
    n_downsampling: int = 3
    n_blocks: int = 18
    ratio: float = 0.75
    enable_lfu: bool = False
    max_features: int = 1024
    output_channels: int = 3
    bn_groups: int = 1
    dtype: Dtype = jnp.float32
    fft_impl: str = "fft"
    unroll_blocks: bool = True
    remat_blocks: bool = False

    @nn.compact
    def __call__(self, x, train: bool, *, stage: str = "full"):
        """`stage`: "full" (image -> image), "front" (image -> bottleneck streams (x_l, x_g)) or
        "rear" (bottleneck streams -> image); refinement optimises the bottleneck between the two."""
        if stage not in ("full", "front", "rear"):
            raise ValueError(f"FFCResNetGenerator: unknown stage {stage!r}")
        common = dict(bn_groups=self.bn_groups, dtype=self.dtype, fft_impl=self.fft_impl)
        if stage == "rear":
            streams = x
        else:
            streams = FFCBnAct(self.ngf, 0.0, 0.0, 7, name="init", **common)((reflect_pad(x, 3), None), train)
            for i in range(self.n_downsampling):
                features = min(self.max_features, self.ngf * 2 ** (i + 1))
                # The last downsampling layer gives birth to the global stream.
                ratio_gout = self.ratio if i == self.n_downsampling - 1 else 0.0
                streams = FFCBnAct(
                    features, 0.0, ratio_gout, 3, strides=2, padding=1, name=f"down_{i}", **common
                )(streams, train)
            if stage == "front":
                return streams

        bottleneck = min(self.max_features, self.ngf * 2**self.n_downsampling)
        block = FFCResnetBlock(bottleneck, self.ratio, self.enable_lfu, name="blocks", **common)
        # Scanned: the blocks' parameters are stacked and one block is traced. Unrolled or run as a
        # loop per platform (lama_jax.models.platform): the same arithmetic either way.
        # Rematerialised, a block keeps only its input for the backward pass and runs its forward
        # again there: the activations of one block in memory instead of all of them.
        apply_block = lambda module, carry, _: (module(carry, train), None)  # noqa: E731
        run_blocks = nn.scan(
            nn.remat(apply_block) if self.remat_blocks else apply_block,
            variable_axes={"params": 0, "batch_stats": 0},
            split_rngs={"params": True},
            length=self.n_blocks,
            unroll=self.n_blocks if self.unroll_blocks else 1,
        )
        streams, _ = run_blocks(block, streams, None)

        y = jnp.concatenate(streams, axis=-1)  # local first, then global
        for i in range(self.n_downsampling):
            features = min(self.max_features, self.ngf * 2 ** (self.n_downsampling - i) // 2)
            y = ConvTranspose2d(features, dtype=self.dtype, name=f"up_{i}")(y)
            y = nn.relu(BatchNorm(groups=self.bn_groups, dtype=self.dtype, name=f"up_bn_{i}")(y, train))
        y = Conv2d(self.output_channels, 7, use_bias=True, dtype=self.dtype, name="final")(reflect_pad(y, 3))
        return jax.nn.sigmoid(y.astype(jnp.float32))
