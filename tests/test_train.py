"""The training run end to end: smoke run, resume determinism, SIGTERM, init_from, config errors.

The runs are subprocesses of `python -m lama_jax.train` (they must be killed, or
exit) on the eight fake CPU devices of conftest; they share a persistent
compilation cache, so only the first one compiles the train step.
"""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax.configs import tiny
from lama_jax import checkpoint, convert, export, train, train_checkpoint, train_step
from lama_jax.inference import Inpainter

REPO = pathlib.Path(__file__).resolve().parents[1]
LOSS_TERMS = ("gen_l1", "gen_adv", "gen_fm", "gen_resnet_pl", "gen_total",
              "discr_real", "discr_fake", "discr_r1", "discr_total")
LOGGED_KEYS = set(LOSS_TERMS) | {
    "step", "discr_real_out", "discr_fake_out", "generator_grad_norm", "generator_param_norm",
    "discriminator_grad_norm", "discriminator_param_norm", "generator_lr", "discriminator_lr",
    "steps_per_s", "img_per_s", "data_wait_s", "skipped_files"}

# Tiny on synthetic 32-pixel crops, one image per device: the smallest run that exercises every part.
# The tiny config's masks are sized for 64-px crops and cover a whole 32-px crop once in 9; alone in its
# BatchNorm group (one crop per device here) such a crop makes the generator's gradient non-finite
# (train._warn_of_fully_masked_crops says why), so a run would stop or not by luck. These never do.
MASKS_FOR_32_PX = {"data.mask_overrides.irregular_kwargs.max_len": 25,
                   "data.mask_overrides.irregular_kwargs.max_width": 6,
                   "data.mask_overrides.box_kwargs.margin": 2,
                   "data.mask_overrides.box_kwargs.bbox_min_size": 4,
                   "data.mask_overrides.box_kwargs.bbox_max_size": 19}
SMALL_OVERRIDES = {"batch_size": 8, "log_every_steps": 1, "eval_every_steps": 1000, "checkpoint_every_steps": 10,
                   "data.source": "synthetic", "data.crop_size": 32, "data.eval_size": 64,
                   "eval.batch_size": 8, "eval.num_image_grids": 2, **MASKS_FOR_32_PX}


def small_config(**overrides):
    config = tiny.get_config()
    for key, value in {**SMALL_OVERRIDES, **overrides}.items():
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    return config


def read_metrics(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def train_losses(workdir):
    """{step: {loss term: value}} of the training lines of metrics.jsonl."""
    return {r["step"]: {k: r[k] for k in LOSS_TERMS} for r in read_metrics(workdir) if "gen_total" in r}


# ---------------------------------------------------------------------------------------------
# Subprocess runs of the CLI


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def cli_args(workdir, **overrides):
    settings = {**SMALL_OVERRIDES, **overrides}
    return [sys.executable, "-m", "lama_jax.train", "--config", "configs/tiny.py", "--workdir", str(workdir),
            *(f"--config.{key}={value}" for key, value in settings.items())]


def start_cli(workdir, env, **overrides):
    """The CLI in the background; its log goes to WORKDIR.log (a pipe nobody reads could fill up)."""
    log = open(f"{workdir}.log", "w")
    process = subprocess.Popen(cli_args(workdir, **overrides), cwd=REPO, env=env, stdout=log, stderr=log)
    log.close()
    return process


def log_tail(workdir):
    return pathlib.Path(f"{workdir}.log").read_text()[-3000:]


def wait_for(predicate, process, workdir, timeout=240.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training exited early ({process.returncode}):\n{log_tail(workdir)}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.05)


def run_cli(workdir, env, **overrides):
    result = subprocess.run(cli_args(workdir, **overrides), cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def finished_checkpoint(workdir, step):
    # Orbax writes into "<step>.orbax-checkpoint-tmp-*" and renames it to "<step>" once complete.
    return (workdir / "checkpoints" / str(step) / "state").is_dir() and \
        (workdir / "checkpoints" / str(step) / "_CHECKPOINT_METADATA").is_file()


@pytest.mark.slow
def test_smoke_run_on_eight_devices_writes_checkpoints_metrics_and_exports(tmp_path, cli_env):
    run_cli(tmp_path, cli_env, total_steps=3, checkpoint_every_steps=2, eval_every_steps=3)

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["devices"] == 8 and summary["final_step"] == 3 and summary["stopped_by"] is None
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
    assert os.listdir(tmp_path / "best") == ["3"]
    records = read_metrics(tmp_path)
    train_records = [r for r in records if "gen_total" in r]
    assert [r["step"] for r in train_records] == [1, 2, 3]
    assert all(set(r) == LOGGED_KEYS for r in train_records)
    assert all(r["img_per_s"] > 0 for r in train_records[1:])
    (val,) = [r for r in records if "val_ssim" in r]
    assert val["step"] == 3 and set(val) == {"step", "val_ssim", "val_psnr", "val_l1"}
    assert 0 < val["val_ssim"] < 1 and summary["validation"]["val_ssim"] == val["val_ssim"]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "eval_images" / "val_inpainting_0000003.png").is_file()

    # The checkpoint holds the whole state: restored onto the 8-device mesh, replicated, at step 3.
    config = small_config()
    mesh = train_step.make_mesh()
    with train_checkpoint.TrainCheckpointer(tmp_path) as checkpointer:
        assert checkpointer.restore_config(3)["batch_size"] == 8
        state = checkpointer.restore(3, train_checkpoint.abstract_train_state(config, mesh))
    assert int(state["step"]) == 3 and mesh.size == 8
    assert state["generator"]["params"]["final"]["kernel"].sharding.is_fully_replicated

    # Export: the generator-only model checkpoint loads in Inpainter with the trained weights.
    export.export_workdir(tmp_path, tmp_path / "exported", stablehlo=False)
    inpainter = Inpainter.from_checkpoint(tmp_path / "exported")
    for got, want in zip(jax.tree.leaves(inpainter.variables), jax.tree.leaves(state["generator"])):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_the_uninterrupted_losses(tmp_path, cli_env):
    uninterrupted, resumed = tmp_path / "uninterrupted", tmp_path / "resumed"
    run_cli(uninterrupted, cli_env, total_steps=20)

    # Same run, killed once step 10's checkpoint is complete (it keeps training meanwhile).
    process = start_cli(resumed, cli_env, total_steps=1000)
    try:
        wait_for(lambda: finished_checkpoint(resumed, 10), process, resumed)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    run_cli(resumed, cli_env, total_steps=20)

    expected, got = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(expected) == list(range(1, 21))
    assert sorted(got) == list(range(1, 21))  # the killed run's lines after step 10 were dropped
    for step in range(1, 21):
        assert got[step] == expected[step], f"step {step}"
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["start_step"] == 10 and summary["final_step"] == 20


def test_sigterm_finishes_the_step_saves_and_exits_zero(tmp_path, cli_env):
    process = start_cli(tmp_path, cli_env, total_steps=1000, checkpoint_every_steps=1000)
    try:
        wait_for(lambda: (tmp_path / "metrics.jsonl").is_file() and len(read_metrics(tmp_path)) >= 3, process,
                 tmp_path)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, log_tail(tmp_path)
    log = pathlib.Path(f"{tmp_path}.log").read_text()
    # Short log lines (time, level, message), and the compile message before the first step.
    assert re.search(r"^\d\d:\d\d:\d\d INFO compiling the train step; ", log, re.MULTILINE), log[-3000:]
    # "read from the compilation cache" when an earlier test compiled the same step into the cache.
    assert re.search(r"^\d\d:\d\d:\d\d INFO train step (compiled|read from the compilation cache) in [\d.]+ s "
                     r"\(traced and lowered in [\d.]+ s\): "
                     r"memory per device ", log,
                     re.MULTILINE)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_by"] == "SIGTERM"
    stopped_at = summary["final_step"]
    assert 3 <= stopped_at < 1000
    assert os.listdir(tmp_path / "checkpoints") == [str(stopped_at)]
    assert max(train_losses(tmp_path)) == stopped_at


def test_unknown_config_key_is_named(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lama_jax.train", "--config", "configs/tiny.py", "--workdir", str(tmp_path),
         "--config.data.crop_sise=64"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --config.data.crop_sise: configs/tiny.py has no key 'data.crop_sise'")
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert "crop_size" in result.stderr  # the keys that do exist are listed
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------
# In-process runs


def test_non_finite_metric_stops_the_run_naming_step_and_term(tmp_path, monkeypatch):
    """The loop with a stand-in step that turns gen_l1 into NaN at step 3: no checkpoint after step 2."""

    def fake_state(config, rng, **kwargs):
        return {"step": jnp.zeros((), jnp.int32), "generator": {"params": {"w": jnp.ones(3)}}}

    def fake_train_step(config, mesh):
        def step(state, batch):
            state = dict(state, step=state["step"] + 1)
            metrics = {name: jnp.float32(1.0) for name in LOSS_TERMS}
            metrics["gen_l1"] = jnp.where(state["step"] == 3, jnp.nan, 1.0) + batch["image"].mean() * 0
            return state, metrics
        return jax.jit(step)

    monkeypatch.setattr(train_step, "create_train_state", fake_state)
    monkeypatch.setattr(train_step, "make_train_step", fake_train_step)
    config = small_config(total_steps=10, checkpoint_every_steps=2, log_every_steps=5)
    with pytest.raises(train.NonFiniteMetricError, match=r"step 3: non-finite gen_l1 = nan; .*checkpoint is step 2"):
        train.train_and_evaluate(config, tmp_path)
    assert os.listdir(tmp_path / "checkpoints") == ["2"]


def test_compile_message_first_and_a_relaunched_finished_run_keeps_its_validation(tmp_path, monkeypatch, caplog):
    """The loop with a stand-in step and evaluation: the compile message comes before step 1; launching the
    finished run again trains nothing and keeps summary.json's validation."""

    def fake_state(config, rng, **kwargs):
        return {"step": jnp.zeros((), jnp.int32), "generator": {"params": {"w": jnp.ones(3)}}}

    def fake_train_step(config, mesh):
        return jax.jit(lambda state, batch: (dict(state, step=state["step"] + 1),
                                             {name: batch["image"].mean() for name in LOSS_TERMS}))

    monkeypatch.setattr(train_step, "create_train_state", fake_state)
    monkeypatch.setattr(train_step, "make_train_step", fake_train_step)
    monkeypatch.setattr(train, "run_evaluation", lambda *args, **kwargs: ({"ssim": 0.5, "psnr": 20.0, "l1": 0.1}, None))
    config = small_config(total_steps=2, checkpoint_every_steps=1000)
    with caplog.at_level("INFO", logger="absl"):
        train.train_and_evaluate(config, tmp_path)
    messages = [record.getMessage() for record in caplog.records]
    compiling = next(i for i, m in enumerate(messages) if m.startswith("compiling the train step"))
    compiled = next(i for i, m in enumerate(messages)
                    if re.match(r"train step (compiled|read from the compilation cache) in", m))
    took = next(i for i, m in enumerate(messages) if m.startswith("step 1 took"))
    assert compiling < compiled < took and "(first time only with the compilation cache)" in messages[compiling]
    validation = {"val_ssim": 0.5, "val_psnr": 20.0, "val_l1": 0.1}
    assert json.loads((tmp_path / "summary.json").read_text())["validation"] == validation

    monkeypatch.setattr(train, "initial_train_state", lambda config, *args: (fake_state(config, None), 2))
    summary = train.train_and_evaluate(config, tmp_path)
    assert summary["start_step"] == summary["final_step"] == 2 and summary["validation"] == validation
    assert json.loads((tmp_path / "summary.json").read_text())["validation"] == validation


def fixture_state_dict(fixtures_dir, name):
    with np.load(fixtures_dir / f"{name}.npz") as f:
        return {k[len("state_dict/"):]: f[k] for k in f.files if k.startswith("state_dict/")}


def test_init_from_a_converted_checkpoint_loads_generator_and_discriminator(tmp_path, fixtures_dir):
    generator_config = dict(ngf=16, n_downsampling=3, n_blocks=2, ratio=0.75, enable_lfu=False)
    discriminator_config = dict(ndf=16, n_layers=4)
    networks = {
        "generator": convert.convert_generator(fixture_state_dict(fixtures_dir, "generator_ffc_small"),
                                               generator_config),
        "discriminator": convert.convert_discriminator(fixture_state_dict(fixtures_dir, "nlayer_discriminator"),
                                                       discriminator_config),
    }
    converted = checkpoint.save_model(tmp_path / "converted", networks,
                                      {"generator": generator_config, "discriminator": discriminator_config})
    config = small_config(init_from=str(converted))
    config.model.generator.update(generator_config)
    config.model.discriminator.update(discriminator_config)

    mesh = train_step.make_mesh()
    with train_checkpoint.TrainCheckpointer(tmp_path / "run") as checkpointer:
        state, step = train.initial_train_state(config, mesh, checkpointer)
    assert step == 0 and int(state["step"]) == 0
    for network in ("generator", "discriminator"):
        for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(state[network]),
                                     jax.tree.leaves(networks[network])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{network}{path}")
    adam_moments = jax.tree.leaves(state["generator_opt_state"])
    assert all(not np.any(np.asarray(m)) for m in adam_moments if np.ndim(m) > 0)  # a fresh optimiser

    # The tiny config's own model does not fit these weights: said before any work starts.
    with pytest.raises(train.TrainingError, match=r"its generator is .*'ngf': 16.* config.model.generator is"):
        with train_checkpoint.TrainCheckpointer(tmp_path / "run2") as checkpointer:
            train.initial_train_state(small_config(init_from=str(converted)), mesh, checkpointer)


def test_missing_perceptual_encoder_says_how_to_convert_it(tmp_path):
    config = small_config()
    config.losses.update(resnet_pl_weight=30.0, resnet_pl_weights=str(tmp_path / "ade20k"))
    with train_checkpoint.TrainCheckpointer(tmp_path / "run") as checkpointer:
        with pytest.raises(train.TrainingError) as error:
            train.initial_train_state(config, train_step.make_mesh(), checkpointer)
    message = str(error.value)
    assert str(tmp_path / "ade20k") in message and "encoder_epoch_20.pth" in message
    assert "python -m lama_jax.convert --network resnet_pl" in message


@pytest.mark.parametrize("overrides, message", [
    ({"eval.best_metric": "ssmi"}, r"best_metric = 'ssmi' is not among the validation results \['ssim', 'psnr', 'l1'\]"),
    ({"eval.metrics": ("ssim", "fid"), "eval.best_metric": "lpips_fid100_f1"},
     r"\['ssim', 'fid', 'ssim_fid100_f1'\]"),
    ({"eval.best_mode": "maximum"}, "best_mode must be 'max' or 'min', got 'maximum'"),
    ({"train.batch_norm": "sync"}, r"config.train.batch_norm = 'sync'; expected one of"),
    ({"data.crop_size": 3}, r"config.data.mask = 'train_mixed' with crop_size = 3: box masks .* do not fit a 3x3"),
])
def test_config_mistakes_stop_the_run_before_any_work(tmp_path, overrides, message):
    with pytest.raises(train.TrainingError, match=message):
        train.train_and_evaluate(small_config(**overrides), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_masks_that_can_hide_a_whole_crop_are_warned_of_at_start_up(caplog):
    tiny_masks = {key: tiny.get_config().data.mask_overrides[key.split(".")[2]][key.split(".")[3]]
                  for key in MASKS_FOR_32_PX}  # the tiny config's own, sized for 64-px crops
    with caplog.at_level("WARNING"):
        train._check_config(small_config(**tiny_masks), num_devices=8)
    (warning,) = [r.getMessage() for r in caplog.records if "covers the whole crop" in r.getMessage()]
    assert "config.data.mask = 'train_mixed' with crop_size = 32" in warning
    covered = int(re.search(r"in (\d+) of 1000 sampled masks", warning).group(1))
    assert 50 < covered < 200  # about one in 9
    assert "each device's BatchNorm sees one crop" in warning  # batch 8 on 8 devices

    caplog.clear()
    with caplog.at_level("WARNING"):
        train._check_config(small_config(**tiny_masks, batch_size=16), num_devices=8)
    (warning,) = [r.getMessage() for r in caplog.records if "covers the whole crop" in r.getMessage()]
    assert "BatchNorm" not in warning  # two crops per BatchNorm group keep a variance

    caplog.clear()
    with caplog.at_level("WARNING"):
        train._check_config(small_config(), num_devices=8)  # the tests' masks for 32-px crops
    assert not [r for r in caplog.records if "covers the whole crop" in r.getMessage()]


def test_configs_spell_out_every_data_field_and_launch_command():
    from lama_jax.configs import big_lama, common, lama_fourier

    for module in (tiny, big_lama, lama_fourier):
        config = module.get_config()
        assert set(config.data.keys()) == set(common.data_config().keys()), module.__name__
        assert f"--config configs/{module.__name__.split('.')[-1]}.py" in module.__doc__
        for key in ("total_steps", "log_every_steps", "checkpoint_every_steps", "eval_every_steps", "seed",
                    "init_from"):
            assert key in config, key
