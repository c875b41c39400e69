"""Inpainting with a trained or converted generator, at any image size.

    inpainter = Inpainter.from_checkpoint("checkpoints/big_lama")
    result = inpainter(image, mask)   # image (N,H,W,3), mask (N,H,W,1) with > 0 a hole
                                      # -> float32 (N,H,W,3) in [0,1]

The image is uint8 (0-255, divided by 255 here) or float in [0, 1]; anything
else (floats in 0-255, other integer types, NaN) is refused with the dtype and
range seen, since it would give a wrong picture rather than an error.

As LaMa's predict: the mask is binarised (> 0 is a hole), image and mask are
padded at the bottom/right to a multiple of 8 with NumPy "symmetric" padding,
the generator runs in eval mode, the prediction is blended into the known
pixels and cropped back. The jitted forward is compiled once per padded shape.
"""

import pathlib
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from lama_jax.models import build_generator

PAD_MODULO = 8
MIN_SIDE = 16  # the bottleneck (1/8) is reflect-padded by 1


def pad_to_modulo(array: np.ndarray, modulo: int = PAD_MODULO) -> np.ndarray:
    """Pads (N,H,W,C) at the bottom and right up to multiples of `modulo`, mirroring the edge pixel."""
    height, width = array.shape[1:3]
    pad_h, pad_w = -height % modulo, -width % modulo
    if not (pad_h or pad_w):
        return array
    return np.pad(array, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="symmetric")


def _image_as_float(image) -> np.ndarray:
    """uint8 divided by 255, or float in [0, 1], as float32; anything else is a ValueError naming it."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if image.size:
        low, high = float(image.min()), float(image.max())
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            hint = "; divide 0-255 values by 255" if high > 1.0 else ""
            raise ValueError(f"image must be uint8 or float in [0, 1], got {image.dtype} values in "
                             f"[{low:g}, {high:g}]{hint}")
    return image.astype(np.float32)


def check_inputs(image, mask) -> Tuple[np.ndarray, np.ndarray]:
    """float32 (N, H, W, 3) image in [0, 1] and (N, H, W, 1) mask, or a ValueError naming what is wrong.

    The image may be uint8 (divided by 255) or float in [0, 1].
    """
    image = np.asarray(image)
    if image.ndim != 4 or image.shape[-1] != 3:
        raise ValueError(f"image must be (N, H, W, 3) uint8 or float in [0, 1], got shape {image.shape}")
    image = _image_as_float(image)
    mask = np.asarray(mask, dtype=np.float32)
    if mask.ndim != 4 or mask.shape[-1] != 1 or mask.shape[:3] != image.shape[:3]:
        raise ValueError(f"mask must be (N, H, W, 1) matching image {image.shape[:3]}, got shape {mask.shape}")
    height, width = image.shape[1:3]
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} (the bottleneck is 1/8), "
                         f"got {height}x{width}")
    return image, mask


def model_input(image: jax.Array, mask: jax.Array) -> jax.Array:
    """The generator's 4-channel input: the image with holes zeroed, then the mask."""
    return jnp.concatenate([image * (1.0 - mask), mask], axis=-1)


def blend(prediction: jax.Array, image: jax.Array, mask: jax.Array) -> jax.Array:
    return mask * prediction + (1.0 - mask) * image


class Inpainter:
    """A generator in eval mode with LaMa's pre- and post-processing."""

    def __init__(self, generator_config: Dict[str, Any], variables: Dict[str, Any], dtype: str = "float32"):
        self.generator_config = dict(generator_config)
        self.generator = build_generator(self.generator_config, dtype=dtype)
        self.variables = jax.device_put(variables)
        self._forward = jax.jit(self._inpaint_padded)
        self._padded_shapes = set()  # (N, H, W) the forward was called with

    @classmethod
    def from_checkpoint(cls, directory, dtype: str = "float32") -> "Inpainter":
        """Loads the generator of a model checkpoint (`lama_jax.convert` / `lama_jax.export` output)."""
        from lama_jax import checkpoint  # Orbax, needed only here: inference from given variables runs without it

        model = checkpoint.load_model(pathlib.Path(directory), networks=["generator"])
        return cls(model.model_config["generator"], model.variables["generator"], dtype=dtype)

    def _inpaint_padded(self, variables, image, mask):
        prediction = self.generator.apply(variables, model_input(image, mask), train=False)
        return blend(prediction, image, mask)

    def __call__(self, image, mask) -> np.ndarray:
        image, mask = check_inputs(image, mask)
        height, width = image.shape[1:3]
        mask = (mask > 0).astype(np.float32)
        image, mask = pad_to_modulo(image), pad_to_modulo(mask)
        result = self._forward(self.variables, image, mask)
        self._padded_shapes.add(image.shape[:3])
        return np.asarray(result)[:, :height, :width]

    def will_compile(self, image_shape) -> bool:
        """Whether inpainting images of `image_shape` (N, H, W, ...) compiles the model first (seconds to
        minutes): true on the first use of a padded size."""
        batch, height, width = image_shape[:3]
        return (batch, height + -height % PAD_MODULO, width + -width % PAD_MODULO) not in self._padded_shapes

    def compiled_shapes(self) -> int:
        """How many padded input shapes the forward has been compiled for."""
        return self._forward._cache_size()
