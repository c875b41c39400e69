"""The ADE20k ResNet50-dilated encoder behind LaMa's high-receptive-field perceptual loss.

CSAIL's semantic-segmentation encoder: a deep stem of three 3x3 convs, then
Bottleneck layers [3, 4, 6, 3] where layer3 and layer4 trade their strides
for dilation (output stride 8). Names mirror the PyTorch keys
(`layer1_0/downsample_conv` is `layer1.0.downsample.0`).
"""

from typing import Any, List

import flax.linen as nn
import jax
import jax.numpy as jnp

from lama_jax.models.layers import BatchNorm, Conv2d

Dtype = Any


class Bottleneck(nn.Module):
    planes: int
    strides: int = 1
    dilation: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def bn(name):
            return BatchNorm(dtype=self.dtype, name=name)

        y = nn.relu(bn("bn1")(Conv2d(self.planes, 1, dtype=self.dtype, name="conv1")(x), train))
        y = Conv2d(
            self.planes, 3, self.strides, padding=self.dilation, dilation=self.dilation,
            dtype=self.dtype, name="conv2",
        )(y)
        y = nn.relu(bn("bn2")(y, train))
        y = bn("bn3")(Conv2d(self.planes * 4, 1, dtype=self.dtype, name="conv3")(y), train)
        if self.downsample:
            x = Conv2d(self.planes * 4, 1, self.strides, dtype=self.dtype, name="downsample_conv")(x)
            x = bn("downsample_bn")(x, train)
        return nn.relu(x + y)


# (planes, blocks, stride, dilation of the first block's 3x3, dilation of the others)
_LAYERS = ((64, 3, 1, 1, 1), (128, 4, 2, 1, 1), (256, 6, 1, 1, 2), (512, 3, 1, 2, 4))


class ResNet50Dilated(nn.Module):
    """Input: ImageNet-normalised NHWC images. Output: [layer1, layer2, layer3, layer4] feature maps."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> List[jax.Array]:
        for i, (features, strides) in enumerate(((64, 2), (64, 1), (128, 1)), start=1):
            x = Conv2d(features, 3, strides, padding=1, dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(BatchNorm(dtype=self.dtype, name=f"bn{i}")(x, train))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

        outputs = []
        for layer, (planes, blocks, strides, first_dilation, dilation) in enumerate(_LAYERS, start=1):
            for b in range(blocks):
                x = Bottleneck(
                    planes,
                    strides=strides if b == 0 else 1,
                    dilation=first_dilation if b == 0 else dilation,
                    downsample=b == 0,
                    dtype=self.dtype,
                    name=f"layer{layer}_{b}",
                )(x, train)
            outputs.append(x)
        return outputs
