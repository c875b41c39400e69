"""Model checkpoints: the networks' variables plus the config that builds them.

A model checkpoint is what `convert` and `export` write and what
`Inpainter.from_checkpoint`, `predict` and `init_from` read:

    DIR/lama_jax_model.json   {"format": ..., "model": {"generator": {...}, "discriminator": {...}}, "networks": [...]}
    DIR/variables/            Orbax pytree {"generator": {"params", "batch_stats"}, "discriminator"?: ..., "resnet_pl"?: ...}

Restoring builds the abstract variable tree from the stored config first, so
a checkpoint that does not fit its config fails with a clear message instead
of yielding a half-filled tree.
"""

import dataclasses
import json
import pathlib
from typing import Any, Dict

import jax
import orbax.checkpoint as ocp

METADATA_FILE = "lama_jax_model.json"
FORMAT = "lama_jax.model/1"
NETWORKS = ("generator", "discriminator", "resnet_pl")


class CheckpointError(ValueError):
    """A model checkpoint directory that is missing, incomplete or inconsistent."""


@dataclasses.dataclass
class ModelCheckpoint:
    variables: Dict[str, Any]  # network name -> {"params", "batch_stats"}
    model_config: Dict[str, Any]  # {"generator": {...}, "discriminator": {...}}
    metadata: Dict[str, Any]


def _abstract_variables(network: str, model_config: Dict[str, Any]):
    from lama_jax.convert import abstract_variables
    from lama_jax.models import ResNet50Dilated, build_discriminator, build_generator

    if network == "generator":
        return abstract_variables(build_generator(model_config["generator"]), (1, 64, 64, 4))
    if network == "discriminator":
        return abstract_variables(build_discriminator(model_config["discriminator"]), (1, 64, 64, 3))
    return abstract_variables(ResNet50Dilated(), (1, 64, 64, 3))


def _plain(config) -> Dict[str, Any]:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def save_model(directory, variables: Dict[str, Any], model_config, *, source: str = "") -> pathlib.Path:
    """Writes `variables` (a subset of NETWORKS) and `model_config` (config.model) to `directory`."""
    directory = pathlib.Path(directory).absolute()
    unknown = set(variables) - set(NETWORKS)
    if unknown or "generator" not in variables and "resnet_pl" not in variables:
        raise CheckpointError(f"save_model: networks must be among {NETWORKS}, got {sorted(variables)}")
    if (directory / "variables").exists():
        raise CheckpointError(f"{directory}: already holds a model checkpoint; choose another --output")
    directory.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(directory / "variables", jax.tree.map(jax.numpy.asarray, variables))
        checkpointer.wait_until_finished()
    metadata = {
        "format": FORMAT,
        "model": _plain(model_config),
        "networks": sorted(variables),
        "source": source,
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    return directory


def read_metadata(directory) -> Dict[str, Any]:
    directory = pathlib.Path(directory)
    path = directory / METADATA_FILE
    if not directory.exists():
        raise CheckpointError(
            f"{directory}: does not exist. Make a model checkpoint with `python -m lama_jax.convert` (official "
            "PyTorch weights) or `python -m lama_jax.export` (a training run).")
    if not path.is_file():
        raise CheckpointError(
            f"{directory}: not a lama_jax model checkpoint (no {METADATA_FILE}). Make one with "
            "`python -m lama_jax.convert` (official PyTorch weights) or `python -m lama_jax.export` (a training run)."
        )
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def load_model(directory, networks=None) -> ModelCheckpoint:
    """Restores the named networks (default: all stored) as host numpy arrays."""
    directory = pathlib.Path(directory).absolute()
    metadata = read_metadata(directory)
    stored = metadata["networks"]
    networks = stored if networks is None else list(networks)
    absent = [n for n in networks if n not in stored]
    if absent:
        raise CheckpointError(f"{directory}: holds {stored}, not {absent}")
    target = {n: _abstract_variables(n, metadata["model"]) for n in stored}
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            restored = checkpointer.restore(directory / "variables", target)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{directory}: variables do not match the stored model config: {e}") from None
    variables = {n: jax.device_get(restored[n]) for n in networks}
    return ModelCheckpoint(variables=variables, model_config=metadata["model"], metadata=metadata)


def parameter_count(variables) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(variables.get("params", {})))
