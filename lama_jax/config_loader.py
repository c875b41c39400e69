"""Loads `get_config()` files (`configs/<name>.py[:arg]`), the one place configs are read.

`python -m lama_jax.train` uses ml_collections' config flags (which also take
`--config.key=value` overrides); the other command-line tools call
`load_config`, which follows the same `path[:arg]` convention.
"""

import importlib.util
import pathlib
import sys

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
    path_text, _, arg = spec.partition(":")
    path = pathlib.Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist (expected e.g. configs/big_lama.py)")
    # Configs import their shared defaults as `configs.common`, relative to the repository root.
    root = str(path.absolute().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    module_spec = importlib.util.spec_from_file_location(f"_lama_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config
