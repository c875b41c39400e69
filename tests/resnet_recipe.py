"""Regenerates the ResNetPL fixture weights from their recipe (tests/fixtures/README.md, the resnet_pl.npz section).

The fixture ships the recipe, not the 94 MB of weights: key i of the sorted
state-dict keys is drawn from `numpy.random.default_rng([seed, i])` by a rule
that depends on the key's name. Every regenerated array is checked against the
recorded float64 sum, so a drifting recipe fails loudly instead of silently
changing the reference loss.
"""

import pathlib
from typing import Dict

import numpy as np

from lama_jax import convert

_FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "resnet_pl.npz"


def _draw(key: str, shape, rng: np.random.Generator) -> np.ndarray:
    if key.endswith("num_batches_tracked"):
        return np.array(1000, np.int64)
    if key.endswith("running_mean"):
        values = rng.normal(0.0, 0.1, shape)
    elif key.endswith("running_var"):
        values = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("bias"):
        values = rng.normal(0.0, 0.05, shape)
    elif key.endswith("weight") and len(shape) == 1:
        values = rng.uniform(0.5, 1.0, shape)
    elif key.endswith("weight") and len(shape) == 4:
        # Multiply by the float64 reciprocal (not divide): the recipe's exact rounding.
        values = rng.standard_normal(shape) * (1.0 / np.sqrt(np.prod(shape[1:])))
    else:
        raise ValueError(f"{_FIXTURE.name}: no recipe rule for key {key!r} with shape {shape}")
    return values.astype(np.float32)


def resnet_pl_state_dict(path: pathlib.Path = _FIXTURE) -> Dict[str, np.ndarray]:
    """The encoder's PyTorch state dict, regenerated and checksum-verified."""
    with np.load(path, allow_pickle=False) as f:
        keys, ndims, shapes = f["recipe/keys"], f["recipe/ndim"], f["recipe/shapes"]
        sums, seed = f["recipe/sum_float64"], int(f["recipe/seed"])
    state_dict = {}
    for i, (key, ndim, padded_shape, expected_sum) in enumerate(zip(keys, ndims, shapes, sums)):
        key = str(key)
        array = _draw(key, tuple(int(s) for s in padded_shape[:ndim]), np.random.default_rng([seed, i]))
        if array.sum(dtype=np.float64) != expected_sum:
            raise AssertionError(f"{path.name}: regenerated {key!r} sums to {array.sum(dtype=np.float64)!r}, "
                                 f"the recipe recorded {expected_sum!r}")
        state_dict[key] = array
    return state_dict


def resnet_pl_variables(path: pathlib.Path = _FIXTURE):
    """The regenerated encoder as Flax `{"params", "batch_stats"}`."""
    return convert.convert_resnet50_dilated(resnet_pl_state_dict(path), source=str(path))
