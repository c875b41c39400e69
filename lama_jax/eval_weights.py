"""Converts the official PyTorch weights of the evaluation networks into Flax variables.

Three files are needed, all distributed by their authors (nothing is downloaded here):

* LPIPS v0.1 linear heads, `vgg.pth`, keys `lin{0..4}.model.1.weight` of shape (1, C, 1, 1);
* torchvision's ImageNet VGG16, `vgg16-397923af.pth`, keys `features.{i}.weight|bias`
  (the `classifier.*` keys are not used);
* pytorch-fid's TF-FID InceptionV3, `pt_inception-2015-12-05-6726825d.pth`, keys like
  `Mixed_5b.branch1x1.conv.weight` and `...bn.{weight,bias,running_mean,running_var}`
  (the 1008-class `fc.*` head is not used).

The converters take plain `{key: numpy array}` state dicts, which
`lama_jax.torch_pickle.load_state_dict` reads without torch and without executing
pickled code. The
expected keys and shapes come from the Flax modules themselves; a file that lacks
keys, has unknown ones, or has a wrong shape is rejected with every offending key
listed (shapes in PyTorch layout: file's vs expected).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import flax
import jax.numpy as jnp
import numpy as np

from lama_jax import torch_pickle
from lama_jax.models import inception as inception_lib
from lama_jax.models import lpips as lpips_lib

StateDict = Mapping[str, np.ndarray]
Path = tuple[str, ...]

# PyTorch OIHW conv weight <-> Flax HWIO kernel.
_OIHW_TO_HWIO = (2, 3, 1, 0)


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """A weights file the user must supply, and where to get it."""

    description: str
    filename: str
    url: str
    flag: str


LPIPS_HEADS = WeightsFile(
    "LPIPS v0.1 linear heads for VGG (official LPIPS repository, richzhang/PerceptualSimilarity)",
    "vgg.pth",
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    "--lpips-weights",
)
VGG16_IMAGENET = WeightsFile(
    "torchvision's ImageNet VGG16",
    "vgg16-397923af.pth",
    "https://download.pytorch.org/models/vgg16-397923af.pth",
    "--vgg-weights",
)
FID_INCEPTION = WeightsFile(
    "pytorch-fid's InceptionV3 with the TensorFlow FID weights",
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    "--inception-weights",
)


def missing_weights_message(weights: WeightsFile, path: str | os.PathLike | None) -> str:
    where = "no path was given" if path is None else f"{os.fspath(path)!r} does not exist"
    return (
        f"{weights.description} weights are needed: file {weights.filename} ({where}). "
        f"Download it from {weights.url} and pass its path with {weights.flag}."
    )


def require_weights_file(path: str | os.PathLike | None, weights: WeightsFile) -> str:
    """Returns `path` if it is an existing file, else raises FileNotFoundError naming the file and its source."""
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(missing_weights_message(weights, path))
    return os.fspath(path)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a PyTorch checkpoint as numpy arrays without executing pickled code."""
    return torch_pickle.load_state_dict(path)


def _convert(
    state: StateDict,
    expected: Mapping[Path, tuple[int, ...]],
    torch_key: Callable[[Path], tuple[str, tuple[int, ...] | None]],
    source: str,
    ignore: Callable[[str], bool],
) -> dict[Path, np.ndarray]:
    """Maps Flax leaf paths to state-dict entries, checking names and shapes.

    `torch_key(path)` gives the PyTorch key and the transpose from PyTorch to Flax
    layout (None to keep the layout).
    """
    converted: dict[Path, np.ndarray] = {}
    used, missing, bad_shapes = set(), [], []
    for path, flax_shape in expected.items():
        key, axes = torch_key(path)
        torch_shape = flax_shape if axes is None else tuple(flax_shape[axes.index(i)] for i in range(len(axes)))
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = np.asarray(state[key])
        if value.shape != torch_shape:
            bad_shapes.append(f"{key}: file has {value.shape}, expected {torch_shape}")
            continue
        converted[path] = (value if axes is None else np.transpose(value, axes)).astype(np.float32)
    unexpected = sorted(k for k in state if k not in used and not ignore(k))
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if bad_shapes:
        problems.append(f"shape mismatches ({len(bad_shapes)}): {'; '.join(bad_shapes)}")
    if problems:
        raise ValueError(f"{source} does not match the expected layout: " + " | ".join(problems))
    return converted


def _expected_shapes(abstract_variables) -> dict[Path, tuple[int, ...]]:
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract_variables))
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def _unflatten(converted: Mapping[Path, np.ndarray]):
    return flax.traverse_util.unflatten_dict({path: jnp.asarray(v) for path, v in converted.items()})


def _source_name(source: str | None, weights: WeightsFile) -> str:
    return f"{weights.filename}-style state dict" if source is None else repr(source)


def convert_lpips(vgg_state: StateDict, lpips_state: StateDict, *, vgg_source=None, lpips_source=None):
    """torchvision VGG16 + LPIPS v0.1 heads state dicts -> variables for `lama_jax.models.lpips.LPIPS`."""
    expected = _expected_shapes(lpips_lib.abstract_lpips_variables())

    def vgg_key(path: Path):
        # ("params", "vgg", "features_5", "kernel") -> "features.5.weight"
        _, _, layer, leaf = path
        index = layer.removeprefix("features_")
        return (f"features.{index}.weight", _OIHW_TO_HWIO) if leaf == "kernel" else (f"features.{index}.bias", None)

    def lin_key(path: Path):
        # ("params", "lin2", "kernel") -> "lin2.model.1.weight"; index 1 follows LPIPS's Dropout.
        return f"{path[1]}.model.1.weight", _OIHW_TO_HWIO

    converted = _convert(
        vgg_state,
        {p: s for p, s in expected.items() if p[1] == "vgg"},
        vgg_key,
        _source_name(vgg_source, VGG16_IMAGENET),
        ignore=lambda k: k.startswith("classifier."),
    )
    converted.update(
        _convert(
            lpips_state,
            {p: s for p, s in expected.items() if p[1] != "vgg"},
            lin_key,
            _source_name(lpips_source, LPIPS_HEADS),
            ignore=lambda k: False,
        )
    )
    return _unflatten(converted)


_INCEPTION_LEAF_NAMES = {
    ("params", "conv", "kernel"): ("conv.weight", _OIHW_TO_HWIO),
    ("params", "bn", "scale"): ("bn.weight", None),
    ("params", "bn", "bias"): ("bn.bias", None),
    ("batch_stats", "bn", "mean"): ("bn.running_mean", None),
    ("batch_stats", "bn", "var"): ("bn.running_var", None),
}


def _inception_key(path: Path):
    # ("params", "Mixed_5b", "branch1x1", "conv", "kernel") -> "Mixed_5b.branch1x1.conv.weight"
    collection, *modules, layer, leaf = path
    suffix, axes = _INCEPTION_LEAF_NAMES[(collection, layer, leaf)]
    return ".".join([*modules, suffix]), axes


def _inception_ignored(key: str) -> bool:
    # The classifier, the aux head and BN step counters play no part in pool3 features.
    return key.startswith(("fc.", "AuxLogits.")) or key.endswith(".num_batches_tracked")


def convert_inception(state: StateDict, *, source=None):
    """pytorch-fid FID Inception state dict -> variables for `lama_jax.models.inception.FIDInceptionV3`."""
    converted = _convert(
        state,
        _expected_shapes(inception_lib.abstract_inception_variables()),
        _inception_key,
        _source_name(source, FID_INCEPTION),
        ignore=_inception_ignored,
    )
    return _unflatten(converted)


def load_lpips_variables(lpips_path, vgg_path):
    """Reads and converts the two LPIPS files; a missing one raises FileNotFoundError saying where to get it."""
    lpips_path = require_weights_file(lpips_path, LPIPS_HEADS)
    vgg_path = require_weights_file(vgg_path, VGG16_IMAGENET)
    return convert_lpips(
        load_state_dict(vgg_path), load_state_dict(lpips_path), vgg_source=vgg_path, lpips_source=lpips_path
    )


def load_inception_variables(path):
    """Reads and converts the FID Inception file; a missing one raises FileNotFoundError saying where to get it."""
    path = require_weights_file(path, FID_INCEPTION)
    return convert_inception(load_state_dict(path), source=path)
