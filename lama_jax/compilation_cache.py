"""JAX's persistent compilation cache, on by default: a relaunch or resume compiles nothing it compiled before.

Compiling the big-lama train step takes minutes on a TPU and about a minute on a CPU; with the
cache a relaunch reads the compiled program back in seconds. Every command-line tool calls
`enable` before its first compilation: `lama_jax.train` with `config.compilation_cache_dir`, the
others with `--compilation_cache_dir`. The directory may be local or, on TPU VMs, a `gs://` path
(JAX writes it through its own file-system layer).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from typing import Dict, Iterator, Optional

import jax

DEFAULT_DIR = "~/.cache/lama_jax/jax_compilation_cache"


def resolve(setting: Optional[str]) -> Optional[str]:
    """The cache directory for `setting`: None → $JAX_COMPILATION_CACHE_DIR or DEFAULT_DIR; "" → off."""
    if setting is None:
        setting = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_DIR
    if not setting:
        return None
    if "://" in setting:
        return setting
    return str(pathlib.Path(setting).expanduser().absolute())


def enable(setting: Optional[str]) -> Optional[str]:
    """Points JAX's persistent cache at `resolve(setting)` (or turns it off); returns the directory."""
    directory = resolve(setting)
    if directory is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if "://" not in directory:
        pathlib.Path(directory).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", directory)
    return directory


_CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


@contextlib.contextmanager
def count_lookups() -> Iterator[Dict[str, int]]:
    """Counts the persistent-cache hits and misses (misses that were written back) inside the block.

    The counts, not the compile time, say whether a relaunch read its programs back: reading a large
    executable can itself take seconds on a busy host.
    """
    counts = {"hits": 0, "misses": 0}

    def listener(event: str, **_):
        if event in _CACHE_EVENTS:
            counts[_CACHE_EVENTS[event]] += 1

    jax.monitoring.register_event_listener(listener)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_listener(listener)
