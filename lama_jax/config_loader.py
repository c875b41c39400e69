"""Finds and loads `get_config()` files, the one place configs are read.

A config spec is `PATH[:arg]` or `NAME[:arg]`: PATH is any config file (for
example `configs/big_lama.py` in a checkout, where `configs/` links to
`lama_jax/configs/`), NAME one of the configs installed with the package
(`big_lama`, `lama_fourier`, `tiny`), so `--config tiny` works from any
directory. `arg` is passed to `get_config(arg)`.

`python -m lama_jax.train` and `python -m lama_jax.aot` read their config
through ml_collections' config flags (which also take `--config.key=value`
overrides) after `resolve_config_argv` has turned a name into the installed
file; the other command-line tools call `load_config`.
"""

import importlib.util
import pathlib

import ml_collections

PACKAGED_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def packaged_names() -> list[str]:
    """Names of the experiment configs shipped in `lama_jax/configs/`."""
    return sorted(p.stem for p in PACKAGED_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "common")


def resolve_spec(spec: str) -> str:
    """`PATH[:arg]` with PATH an existing file; a packaged config's NAME becomes its installed path."""
    path_text, sep, arg = spec.partition(":")
    path = pathlib.Path(path_text)
    if path.is_file():
        return spec
    name = path_text[:-3] if path_text.endswith(".py") else path_text
    if "/" not in name and name in packaged_names():
        return str(PACKAGED_DIR / f"{name}.py") + sep + arg
    raise FileNotFoundError(
        f"config {path_text!r} is neither a file nor a packaged config "
        f"(packaged: {', '.join(packaged_names())}; or a path such as lama_jax/configs/tiny.py)")


def resolve_config_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of `--config` resolved by `resolve_spec`, for absl's config flags."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            argv[i] = "--config=" + resolve_spec(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = resolve_spec(argv[i + 1])
    return argv


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The locked ConfigDict that `get_config([arg])` of the file or packaged config returns."""
    path_text, _, arg = resolve_spec(spec).partition(":")
    path = pathlib.Path(path_text)
    module_spec = importlib.util.spec_from_file_location(f"_lama_config_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    config.lock()
    return config
