"""Import official PyTorch LaMa weights into Flax variables, and the `convert` CLI.

    python -m lama_jax.convert --torch-checkpoint big-lama/models/best.ckpt --output checkpoints/big_lama

(`--config` defaults to the packaged big_lama; give `lama_fourier` or a file for other weights)

reads a Lightning `.ckpt` (keys `generator.*`, optionally `discriminator.*`)
or a plain state-dict `.pth` (the generator's keys, or the ADE20k
`encoder_epoch_20.pth` with `--network resnet_pl`) without torch and without
executing pickled code, and writes a model checkpoint (`lama_jax.checkpoint`).

The mapping walks the Flax variable tree and derives each leaf's PyTorch key
from its path, so the reference's module names are the single source of
truth; the layout rules are in docs/parity.md, "Checkpoint conversion".
"""

import re
import sys
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}


class ConversionError(ValueError):
    """Missing/unexpected keys or shape mismatches between a state dict and a model."""


def _segment_names(path: Tuple[str, ...]) -> List[str]:
    """Flax module path -> PyTorch module path segments for the shared submodule names."""
    out = []
    for i, name in enumerate(path):
        parent = path[i - 1] if i else ""
        if parent == "convg2g" and name == "conv1":
            out.append("conv1.0")
        elif parent == "convg2g" and name == "bn1":
            out.append("conv1.1")
        elif name == "downsample_conv":
            out.append("downsample.0")
        elif name == "downsample_bn":
            out.append("downsample.1")
        elif m := re.fullmatch(r"(layer\d)_(\d+)", name):
            out.append(f"{m.group(1)}.{m.group(2)}")
        else:
            out.append(name)
    return out


def generator_key_fn(n_downsampling: int, n_blocks: int) -> Callable[[Tuple[str, ...], Optional[int]], str]:
    """Returns f(flax module path, block index or None) -> torch key prefix of `model.<i>`."""
    first_block = 2 + n_downsampling
    decoder = first_block + n_blocks + 1  # after the blocks comes the concat layer
    final = decoder + 3 * n_downsampling + 1  # after ConvT/BN/ReLU triples comes a pad

    def key(path, block):
        top, rest = path[0], list(path[1:])
        if top == "init":
            index = 1
        elif m := re.fullmatch(r"down_(\d+)", top):
            index = 2 + int(m.group(1))
        elif top == "blocks":
            index = first_block + block
        elif m := re.fullmatch(r"up_(\d+)", top):
            index = decoder + 3 * int(m.group(1))
        elif m := re.fullmatch(r"up_bn_(\d+)", top):
            index = decoder + 3 * int(m.group(1)) + 1
        elif top == "final":
            index = final
        else:
            raise ConversionError(f"generator: no PyTorch module for Flax path {'/'.join(path)}")
        return ".".join(["model", str(index), *_segment_names(tuple(rest))])

    return key


def discriminator_key(path, block):
    del block
    (name,) = path
    kind, index = re.fullmatch(r"(conv|bn)(\d+)", name).groups()
    return f"model{index}.{0 if kind == 'conv' else 1}"


def resnet_key(path, block):
    del block
    return ".".join(_segment_names(tuple(path)))


def submodule_key_fn(context: Tuple[str, ...] = ()):
    """Key function for a module converted on its own, e.g. a SpectralTransform (context ("convg2g",))."""

    def key(path, block):
        del block
        return ".".join(_segment_names(tuple(context) + tuple(path))[len(context):])

    return key


def _to_flax_layout(array: np.ndarray, leaf: str, transposed_conv: bool) -> np.ndarray:
    if leaf == "kernel":
        if transposed_conv:  # (in, out, kh, kw) -> flipped HWIO of the equivalent dilated conv
            return np.ascontiguousarray(array[:, :, ::-1, ::-1].transpose(2, 3, 0, 1))
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # (out, in, kh, kw) -> HWIO
    return array


def _expected_torch_shape(flax_shape, leaf: str, transposed_conv: bool):
    if leaf == "kernel":
        kh, kw, i, o = flax_shape
        return (i, o, kh, kw) if transposed_conv else (o, i, kh, kw)
    return tuple(flax_shape)


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
    abstract_variables,
    key_fn: Callable[[Tuple[str, ...], Optional[int]], str],
    *,
    stacked_prefix: Optional[str] = None,
    name: str = "model",
    source: str = "state dict",
):
    """Fill `abstract_variables` ({"params", "batch_stats"} of ShapeDtypeStructs) from `state_dict`.

    Leaves under `stacked_prefix` carry a leading block axis; block i's
    arrays come from key_fn(path, i). Raises ConversionError listing every
    missing and unexpected key, or naming a key whose shape differs.
    """
    used, missing = set(), []

    def convert(path, leaf_struct):
        names = [p.key for p in path]
        collection, module_path, leaf = names[0], tuple(names[1:-1]), names[-1]
        del collection
        transposed = bool(module_path) and re.fullmatch(r"up_\d+", module_path[0]) is not None
        torch_leaf = _LEAF_TO_TORCH.get(leaf, leaf)
        stacked = stacked_prefix is not None and module_path[:1] == (stacked_prefix,)
        blocks = range(leaf_struct.shape[0]) if stacked else [None]
        shape = leaf_struct.shape[1:] if stacked else leaf_struct.shape
        arrays = []
        for block in blocks:
            key = f"{key_fn(module_path, block)}.{torch_leaf}"
            if key not in state_dict:
                missing.append(key)
                continue
            used.add(key)
            value = np.asarray(state_dict[key])
            expected = _expected_torch_shape(shape, leaf, transposed)
            if tuple(value.shape) != expected:
                raise ConversionError(
                    f"{name}: shape mismatch for '{key}' in {source}: checkpoint has {tuple(value.shape)}, "
                    f"the model expects {expected}"
                )
            arrays.append(_to_flax_layout(value.astype(np.float32), leaf, transposed))
        if len(arrays) != len(blocks):
            return None
        return np.stack(arrays) if stacked else arrays[0]

    variables = jax.tree_util.tree_map_with_path(convert, abstract_variables)
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith("num_batches_tracked"))
    if missing or unexpected:
        lines = [f"{name}: the {source} does not match the model"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected))
        raise ConversionError("\n".join(lines))
    return variables


def strip_prefix(state_dict: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def abstract_variables(module, input_shape) -> dict:
    """Shapes of `{"params", "batch_stats"}` without allocating (jax.eval_shape of init)."""

    def init():
        return module.init(jax.random.key(0), np.zeros(input_shape, np.float32), train=False)

    return jax.eval_shape(init)


def convert_generator(state_dict, generator_cfg, *, source="state dict"):
    """PyTorch `FFCResNetGenerator` state dict (keys `model.*`) -> Flax variables."""
    from lama_jax.models import build_generator

    module = build_generator(generator_cfg)
    shapes = abstract_variables(module, (1, 64, 64, 4))
    key_fn = generator_key_fn(generator_cfg["n_downsampling"], generator_cfg["n_blocks"])
    return torch_to_flax(state_dict, shapes, key_fn, stacked_prefix="blocks", name="generator", source=source)


def convert_discriminator(state_dict, discriminator_cfg, *, source="state dict"):
    """PyTorch `NLayerDiscriminator` state dict (keys `model{k}.*`) -> Flax variables."""
    from lama_jax.models import build_discriminator

    shapes = abstract_variables(build_discriminator(discriminator_cfg), (1, 64, 64, 3))
    return torch_to_flax(state_dict, shapes, discriminator_key, name="discriminator", source=source)


def convert_resnet50_dilated(state_dict, *, source="state dict"):
    """ADE20k `resnet50dilated` encoder state dict -> Flax variables (the perceptual-loss network)."""
    from lama_jax.models import ResNet50Dilated

    shapes = abstract_variables(ResNet50Dilated(), (1, 64, 64, 3))
    return torch_to_flax(state_dict, shapes, resnet_key, name="resnet_pl", source=source)


# --- command line -----------------------------------------------------------------------------

LIGHTNING_PREFIXES = {
    "generator": "generator.",
    "discriminator": "discriminator.",
    "resnet_pl": "loss_resnet_pl.impl.",
}


def convert_checkpoint(path, model_config, network: str = "auto"):
    """Reads a PyTorch `.ckpt`/`.pth` file and returns {network: variables} for every network found.

    `network="auto"` takes `generator.*` (+ `discriminator.*`, `loss_resnet_pl.impl.*`) from a
    Lightning checkpoint, or treats an unprefixed state dict as a bare generator (`model.*` keys)
    or ADE20k encoder (`conv1.weight`, `layer1.*`). Other keys of a Lightning checkpoint (evaluator
    buffers, `val_evaluator.*`) are ignored, as the reference's strict=False load does.
    """
    from lama_jax.torch_pickle import load_state_dict

    state = load_state_dict(path)
    source = str(path)
    converters = {
        "generator": lambda sd: convert_generator(sd, model_config["generator"], source=source),
        "discriminator": lambda sd: convert_discriminator(sd, model_config["discriminator"], source=source),
        "resnet_pl": lambda sd: convert_resnet50_dilated(sd, source=source),
    }
    prefixed = {name: strip_prefix(state, prefix) for name, prefix in LIGHTNING_PREFIXES.items()}
    if any(prefixed.values()):
        wanted = [n for n in LIGHTNING_PREFIXES if prefixed[n]] if network == "auto" else [network]
        for name in wanted:
            if not prefixed[name]:
                raise ConversionError(f"{path}: no '{LIGHTNING_PREFIXES[name]}*' keys for the {name}")
        return {name: converters[name](prefixed[name]) for name in wanted}
    if network == "auto":
        if any(k.startswith("model.") for k in state):
            network = "generator"
        elif "conv1.weight" in state and any(k.startswith("layer1.") for k in state):
            network = "resnet_pl"
        elif "model0.0.weight" in state:
            network = "discriminator"
        else:
            sample = ", ".join(sorted(state)[:5])
            raise ConversionError(f"{path}: cannot tell which network these keys belong to (first keys: {sample})")
    return {network: converters[network](state)}


def main(argv=None) -> int:
    from lama_jax import checkpoint, cli
    from lama_jax.config_loader import load_config
    from lama_jax.torch_pickle import CheckpointFormatError, UnsafeCheckpointError

    parser = cli.ArgumentParser(prog="python -m lama_jax.convert",
                                description="Convert official PyTorch LaMa weights into a lama_jax model checkpoint.")
    parser.add_argument("--config", default="big_lama",
                        help="config whose `model` section fits the weights: a packaged name (big_lama, "
                             "lama_fourier, tiny) or a config file (default %(default)s)")
    parser.add_argument("--torch-checkpoint", required=True,
                        help="PyTorch .ckpt (Lightning, e.g. big-lama/models/best.ckpt) or .pth file")
    parser.add_argument("--output", required=True, help="new folder for the model checkpoint")
    parser.add_argument("--network", default="auto", choices=["auto", *LIGHTNING_PREFIXES],
                        help="which network the file holds (default: tell from its keys)")
    args = parser.parse_args(argv)

    try:
        model_config = load_config(args.config).model.to_dict()
        networks = convert_checkpoint(args.torch_checkpoint, model_config, args.network)
        output = checkpoint.save_model(args.output, networks, model_config, source=args.torch_checkpoint)
    except (ConversionError, checkpoint.CheckpointError, CheckpointFormatError, UnsafeCheckpointError, OSError) as e:
        return cli.error(e)
    for name, variables in networks.items():
        print(f"{name}: {checkpoint.parameter_count(variables):,} parameters")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
