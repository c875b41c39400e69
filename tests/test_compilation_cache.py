"""The persistent compilation cache and the start-up report of a training run, through the CLI."""

import json
import os
import subprocess
import sys

from test_train import REPO, SMALL_OVERRIDES  # pylint: disable=g-bad-import-order


def launch(workdir, cache_dir, **overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    settings = {**SMALL_OVERRIDES, "compilation_cache_dir": str(cache_dir), **overrides}
    result = subprocess.run(
        [sys.executable, "-m", "lama_jax.train", "--config", "tiny", "--workdir", str(workdir),
         *(f"--config.{key}={value}" for key, value in settings.items())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "summary.json").read_text())


def test_relaunch_compiles_the_step_from_the_cache_and_reports_it(tmp_path):
    cache, workdir = tmp_path / "cache", tmp_path / "run"
    first = launch(workdir, cache, total_steps=2, profile_steps="1:2")
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first launch wrote no cache entries"
    assert list((workdir / "profile").rglob("*.xplane.pb")), "no profiler trace of step 1"

    startup = first["startup"]
    assert startup["parameters"]["generator"] > 0 and startup["parameters"]["discriminator"] > 0
    assert "resnet_pl" not in startup["parameters"]  # tiny has no perceptual loss
    assert startup["memory_bytes"]["total"] > 0 and startup["flops"] > 0
    assert startup["collectives"]["all-reduce"]["count"] > 0  # the gradients' (test_aot.py checks the rest)

    assert startup["from_compilation_cache"] is False

    second = launch(workdir, cache, total_steps=3)  # resumes at step 2 and compiles the same step
    assert second["start_step"] == 2 and second["final_step"] == 3
    assert second["startup"]["from_compilation_cache"] is True, second["startup"]
    assert sorted(p.name for p in cache.iterdir()) == entries, "the relaunch compiled a program anew"
    # compile_s is XLA's part alone (tracing and lowering are lower_s): a cache hit only deserialises,
    # which on a loaded 2-core host has taken up to 12 % of the cold compile (2.0 s of 17.6 s).
    assert second["startup"]["compile_s"] < 0.3 * startup["compile_s"], (second["startup"], startup)


def test_empty_cache_dir_turns_the_cache_off(tmp_path):
    from lama_jax import compilation_cache

    assert compilation_cache.resolve("") is None
    assert compilation_cache.resolve("gs://bucket/cache") == "gs://bucket/cache"
    assert compilation_cache.resolve(str(tmp_path / "c")) == str(tmp_path / "c")
    assert compilation_cache.resolve("~/x").startswith(os.path.expanduser("~"))


def test_predict_writes_its_programs_to_the_given_cache(tmp_path):
    import jax
    import numpy as np
    from PIL import Image

    from lama_jax import checkpoint
    from lama_jax.configs import tiny
    from lama_jax.models import build_generator

    model_config = tiny.get_config().model.to_dict()
    variables = build_generator(model_config["generator"]).init(jax.random.key(0), np.zeros((1, 16, 16, 4)),
                                                               train=False)
    checkpoint.save_model(tmp_path / "model", {"generator": variables}, model_config)
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(tmp_path / "photo.png")
    hole = np.zeros((32, 48), np.uint8)
    hole[8:20, 10:30] = 255
    Image.fromarray(hole).save(tmp_path / "mask.png")
    cache = tmp_path / "predict_cache"
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    result = subprocess.run(
        [sys.executable, "-m", "lama_jax.predict", "--checkpoint", str(tmp_path / "model"), "--image",
         str(tmp_path / "photo.png"), "--mask", str(tmp_path / "mask.png"), "--output", str(tmp_path / "out.png"),
         "--compilation-cache-dir", str(cache)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out.png").is_file()
    assert any(p.name.startswith("jit_") for p in cache.iterdir()), sorted(p.name for p in cache.iterdir())
