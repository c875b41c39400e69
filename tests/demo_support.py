"""Shared by the demo tests: a tiny generator checkpoint and a demo server running in a thread."""

import contextlib
import pathlib
import threading

import jax
import numpy as np

from lama_jax import checkpoint, demo
from lama_jax.convert import abstract_variables
from lama_jax.models import build_generator

TINY_GENERATOR = dict(ngf=8, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "data" / "samples"


def random_generator_variables(cfg, seed: int = 0):
    """He-scaled random kernels, zero biases, identity batch norm.

    Filled from the abstract shapes rather than `generator.init`, which runs the
    FFC blocks op by op and takes tens of seconds on a busy 2-core machine.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract_variables(build_generator(cfg), (1, 64, 64, 4)))


def write_tiny_checkpoint(directory) -> pathlib.Path:
    return checkpoint.save_model(
        directory,
        {"generator": random_generator_variables(TINY_GENERATOR)},
        {"generator": TINY_GENERATOR, "discriminator": dict(ndf=8, n_layers=3)},
        source="tests/demo_support.py random weights",
    )


@contextlib.contextmanager
def serving(app: demo.DemoApp):
    """A DemoServer on a free loopback port, served from a thread and shut down on exit."""
    server = demo.DemoServer(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
