"""Export of a training checkpoint: model checkpoint for Inpainter, StableHLO that runs without lama_jax."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from lama_jax import export, train_checkpoint
from lama_jax.inference import Inpainter


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
    export.main(["--workdir", str(workdir), "--output", str(out), "--sizes", "32x48", "--platforms", "cpu"])

    inpainter = Inpainter.from_checkpoint(out)
    assert leaves_equal(inpainter.variables, later["generator"])  # the newest step by default
    manifest = json.loads((out / export.MANIFEST_FILE).read_text())
    assert manifest["step"] == 2 and manifest["generator"]["ngf"] == 8
    (artifact,) = manifest["artifacts"]
    assert artifact["file"] == "inpaint_32x48.stablehlo" and artifact["platforms"] == ["cpu"]

    inpaint = export.load_stablehlo(out / artifact["file"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):  # the batch is symbolic
        image = rng.uniform(size=(batch, 32, 48, 3)).astype(np.float32)
        mask = (rng.uniform(size=(batch, 32, 48, 1)) > 0.6).astype(np.float32)
        np.testing.assert_allclose(np.asarray(inpaint(image, mask)), inpainter(image, mask), atol=1e-6)
    with pytest.raises(Exception, match="32"):
        inpaint(np.zeros((1, 64, 64, 3), np.float32), np.zeros((1, 64, 64, 1), np.float32))


def test_stablehlo_artifact_runs_without_lama_jax(workdir, tmp_path):
    workdir, state, _ = workdir
    out = tmp_path / "exported"
    export.export_workdir(workdir, out, step=1, sizes=((16, 24),), platforms=("cpu",))
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(2, 16, 24, 3)).astype(np.float32)
    mask = np.zeros((2, 16, 24, 1), np.float32)
    mask[:, 4:12, 6:18] = 1
    np.savez(tmp_path / "inputs.npz", image=image, mask=mask)
    script = f"""
import sys, jax, numpy as np
inputs = np.load({str(tmp_path / 'inputs.npz')!r})
inpaint = jax.export.deserialize(bytearray(open({str(out / 'inpaint_16x24.stablehlo')!r}, 'rb').read()))
np.save({str(tmp_path / 'result.npy')!r}, np.asarray(inpaint.call(inputs['image'], inputs['mask'])))
assert not any(name.startswith('lama_jax') for name in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], cwd="/", capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    expected = Inpainter(tiny.get_config().model.generator.to_dict(), state["generator"])(image, mask)
    np.testing.assert_allclose(np.load(tmp_path / "result.npy"), expected, atol=1e-6)


def test_export_picks_the_step_or_the_best(workdir, tmp_path):
    workdir, state, later = workdir
    export.export_workdir(workdir, tmp_path / "step1", step=1, sizes=())
    assert leaves_equal(Inpainter.from_checkpoint(tmp_path / "step1").variables, state["generator"])
    manifest = export.export_workdir(workdir, tmp_path / "best", best=True, sizes=())
    assert manifest["step"] == 1  # ssim 0.5 beat step 2's 0.4
    assert leaves_equal(Inpainter.from_checkpoint(tmp_path / "best").variables, state["generator"])


@pytest.mark.parametrize("args, message", [
    (["--step", "7"], r"has no checkpoint 7; it has \[1, 2\]"),
    (["--sizes", "500x512"], "multiples of 8"),
    (["--sizes", "512"], "expected HEIGHTxWIDTH"),
])
def test_export_errors_are_clear(workdir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        export.main(["--workdir", str(workdir[0]), "--output", str(tmp_path / "o"), *args])


def test_export_of_a_folder_without_checkpoints(tmp_path):
    with pytest.raises(SystemExit, match="is .* a lama_jax.train workdir"):
        export.main(["--workdir", str(tmp_path), "--output", str(tmp_path / "o")])
