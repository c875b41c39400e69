"""Export of a training checkpoint: model checkpoint for Inpainter, StableHLO that runs without lama_jax."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lama_jax.configs import tiny
from lama_jax import export, train_checkpoint
from lama_jax.inference import Inpainter
from lama_jax.models import build_generator


def random_state(abstract, rng):
    """Random values of the right shapes (BN variances positive); compiling no initialiser."""
    def fill(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
        return (rng.normal(0, 0.2, leaf.shape)).astype(leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, abstract)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir with checkpoints 1 and 2 (different generators) and a best copy of step 1."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny.get_config()
    state = random_state(train_checkpoint.abstract_train_state(config), np.random.default_rng(0))
    later = jax.tree.map(lambda x: x, state)
    later["generator"]["params"] = jax.tree.map(lambda p: p * 1.5, state["generator"]["params"])
    with train_checkpoint.TrainCheckpointer(workdir) as checkpointer:
        checkpointer.save(1, state, config=config)
        checkpointer.save_best(1, state, config=config, metrics={"ssim": 0.5, "psnr": 20.0, "l1": 0.1})
        checkpointer.save(2, later, config=config)
        checkpointer.save_best(2, later, config=config, metrics={"ssim": 0.4, "psnr": 21.0, "l1": 0.1})
    return workdir, state, later


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_export_writes_a_model_checkpoint_and_a_stablehlo_artifact(workdir, tmp_path):
    workdir, _, later = workdir
    out = tmp_path / "exported"
    assert export.main(["--workdir", str(workdir), "--output", str(out)]) == 0  # lowered for cpu, cuda and tpu

    inpainter = Inpainter.from_checkpoint(out)
    assert leaves_equal(inpainter.variables, later["generator"])  # the newest step by default
    manifest = json.loads((out / export.MANIFEST_FILE).read_text())
    assert manifest["step"] == 2 and manifest["generator"]["ngf"] == 8
    artifact = manifest["artifact"]
    assert artifact["file"] == "inpaint.stablehlo" and artifact["platforms"] == ["cpu", "cuda", "tpu"]
    assert artifact["sizes"] == "H and W multiples of 8, at least 16"

    # One artifact for every batch and size: symbolic B, H, W; load_stablehlo pads other sizes.
    inpaint = export.load_stablehlo(out / artifact["file"])
    rng = np.random.default_rng(0)
    for batch, height, width in [(1, 16, 24), (3, 32, 48), (2, 40, 16), (1, 37, 50)]:
        image = rng.uniform(size=(batch, height, width, 3)).astype(np.float32)
        mask = (rng.uniform(size=(batch, height, width, 1)) > 0.6).astype(np.float32)
        np.testing.assert_allclose(inpaint(image, mask), inpainter(image, mask), atol=2e-6)


def test_stablehlo_artifact_states_its_shape_rules(workdir, tmp_path):
    out = tmp_path / "exported"
    export.export_workdir(workdir[0], out, platforms=("cpu",))
    call = jax.export.deserialize(bytearray((out / export.ARTIFACT_FILE).read_bytes())).call
    with pytest.raises(ValueError, match="Division had remainder 6 when computing the value of 'h'"):
        call(np.zeros((1, 30, 40, 3), np.float32), np.zeros((1, 30, 40, 1), np.float32))
    inpaint = export.load_stablehlo(out / export.ARTIFACT_FILE)
    with pytest.raises(ValueError, match=r"at least 16x16 \(the bottleneck is 1/8\), got 16x8"):
        inpaint(np.zeros((1, 16, 8, 3), np.float32), np.zeros((1, 16, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"mask must be \(N, H, W, 1\) matching image \(1, 16, 16\)"):
        inpaint(np.zeros((1, 16, 16, 3), np.float32), np.zeros((1, 16, 16, 3), np.float32))


def test_stablehlo_artifact_runs_without_lama_jax(workdir, tmp_path):
    workdir, state, _ = workdir
    out = tmp_path / "exported"
    export.export_workdir(workdir, out, step=1, platforms=("cpu",))
    rng = np.random.default_rng(1)
    inputs = {}
    for name, (batch, height, width) in {"small": (2, 16, 24), "large": (1, 48, 32)}.items():
        inputs[f"{name}_image"] = rng.uniform(size=(batch, height, width, 3)).astype(np.float32)
        mask = np.zeros((batch, height, width, 1), np.float32)
        mask[:, 4:12, 6:18] = 1
        inputs[f"{name}_mask"] = mask
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = f"""
import sys, jax, numpy as np
inputs = np.load({str(tmp_path / 'inputs.npz')!r})
inpaint = jax.export.deserialize(bytearray(open({str(out / 'inpaint.stablehlo')!r}, 'rb').read()))
results = {{name: np.asarray(inpaint.call(inputs[name + '_image'], inputs[name + '_mask']))
           for name in ('small', 'large')}}
np.savez({str(tmp_path / 'results.npz')!r}, **results)
assert not any(name.startswith('lama_jax') for name in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    inpainter = Inpainter(tiny.get_config().model.generator.to_dict(), state["generator"])
    results = np.load(tmp_path / "results.npz")
    for name in ("small", "large"):
        expected = inpainter(inputs[f"{name}_image"], inputs[f"{name}_mask"])
        np.testing.assert_allclose(results[name], expected, atol=2e-6)


def test_stablehlo_of_an_lfu_generator_takes_square_sides(tmp_path):
    generator_config = {**tiny.get_config().model.generator.to_dict(), "enable_lfu": True}
    variables = random_state(jax.eval_shape(lambda: build_generator(generator_config).init(
        jax.random.key(0), jnp.zeros((1, 32, 32, 4)), train=False)), np.random.default_rng(2))
    exported = export.export_stablehlo(generator_config, variables, platforms=("cpu",))
    inpainter = Inpainter(generator_config, variables)
    rng = np.random.default_rng(3)
    for side in (16, 48):
        image = rng.uniform(size=(2, side, side, 3)).astype(np.float32)
        mask = (rng.uniform(size=(2, side, side, 1)) > 0.5).astype(np.float32)
        np.testing.assert_allclose(exported.call(image, mask), inpainter(image, mask), atol=2e-6)
    with pytest.raises(ValueError, match=r"args\[0\].shape\[2\] \(= 32\) and the specification '16\*s' \(= 16\)"):
        exported.call(np.zeros((1, 16, 32, 3), np.float32), np.zeros((1, 16, 32, 1), np.float32))


def test_export_picks_the_step_or_the_best(workdir, tmp_path):
    workdir, state, later = workdir
    export.export_workdir(workdir, tmp_path / "step1", step=1, stablehlo=False)
    assert leaves_equal(Inpainter.from_checkpoint(tmp_path / "step1").variables, state["generator"])
    manifest = export.export_workdir(workdir, tmp_path / "best", best=True, stablehlo=False)
    assert manifest["step"] == 1  # ssim 0.5 beat step 2's 0.4
    assert leaves_equal(Inpainter.from_checkpoint(tmp_path / "best").variables, state["generator"])


@pytest.mark.parametrize("args, message", [
    (["--step", "7"], r"has no checkpoint 7; it has \[1, 2\]"),
    (["--platforms", "cpu,gpu"], r"unknown platform 'gpu'; choose from cpu, cuda, rocm, tpu"),
])
def test_export_errors_are_clear(workdir, tmp_path, args, message, capsys):
    assert export.main(["--workdir", str(workdir[0]), "--output", str(tmp_path / "o"), *args]) == 1
    assert re.fullmatch(f"error: .*{message}.*\n", capsys.readouterr().err)


def test_export_of_a_folder_without_checkpoints(tmp_path, capsys):
    assert export.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    assert re.fullmatch("error: .* is .* a lama_jax.train workdir.*\n", capsys.readouterr().err)
