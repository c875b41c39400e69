"""Test-session setup shared by every test module.

Eight fake CPU devices let the sharding tests run anywhere; the flag must be
set before JAX initialises, hence here at import time.
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Only one process may load libtpu by default; the TPU topology compiles of test_aot.py use no TPU,
# so a test run may share it with another (a concurrent test run or `lama_jax.aot`).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# Training runs enable JAX's persistent compilation cache; tests keep theirs out of ~/.cache.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="lama_jax_test_cache_"))

import pathlib

import pytest
from absl import flags

# Grain's multiprocessing reads absl flags; outside absl.app.run they are unparsed.
flags.FLAGS.mark_as_parsed()

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
