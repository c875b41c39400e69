"""benchmarks/compare_pytorch.py's plumbing against a small stand-in for an upstream LaMa checkout.

The stand-in (tests/lama_stand_in.py, written to tmp_path) has the module and
function names the benchmark imports from upstream and nothing of LaMa. Timings
are produced but never asserted.
"""

import importlib.util
import json
import math
import pathlib
import shutil
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")

from lama_jax import convert  # noqa: E402
from lama_jax.models import build_generator  # noqa: E402

import lama_stand_in  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATOR, DISCRIMINATOR = lama_stand_in.GENERATOR, lama_stand_in.DISCRIMINATOR


def load_benchmark():
    spec = importlib.util.spec_from_file_location("compare_pytorch", ROOT / "benchmarks" / "compare_pytorch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


compare = load_benchmark()

CONFIG = f"""
from lama_jax.configs import tiny

def get_config(arg=None):
    config = tiny.get_config()
    config.model.generator.update(ngf={GENERATOR['ngf']}, n_downsampling={GENERATOR['n_downsampling']},
                                  n_blocks={GENERATOR['n_blocks']})
    config.model.discriminator.update(ndf={DISCRIMINATOR['ndf']}, n_layers={DISCRIMINATOR['n_layers']})
    config.data.crop_size = 32
    return config
"""

@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    root = lama_stand_in.write_stand_in(tmp_path_factory.mktemp("lama-root"))
    config = root.parent / "compare_config.py"
    config.write_text(CONFIG)
    return root, config


@pytest.mark.slow  # compiles the tiny train step in both step modes: ~50 s of CPU
def test_compares_both_sides_on_one_machine(stand_in, capsys):
    root, config = stand_in
    status = compare.main(["--lama-root", str(root), "--lama-commit", "0123abc", "--config", str(config),
                           "--sizes", "32", "--train-size", "32", "--repeats", "1", "--skip", "fwd_bwd", "fused",
                           "--loader-samples", "16", "--conv-shape", "16", "16", "16", "--json"])
    assert status == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_machine"] and "ratios_refused" not in result
    assert result["lama_commit"] == "0123abc"
    assert result["machine"]["cpu"] == result["torch_machine"]["cpu"]
    assert len(result["load_average_before"]) == len(result["load_average_after"]) == 3
    assert set(result["figures"]) == {"eval_32", "train_step_reference", "loader", "conv3x3_fwd", "conv3x3_fwd_bwd"}
    for figure in result["figures"].values():
        assert figure["speedup"] > 0
    for name in ("conv3x3_fwd", "conv3x3_fwd_bwd"):
        assert result["figures"][name]["lama_jax_gflop_per_s"] > 0 and result["figures"][name]["torch_gflop_per_s"] > 0
    assert set(result["compile_s"]) == {"eval_32", "train_step_reference", "conv3x3_fwd", "conv3x3_fwd_bwd"}
    # The upstream side built its networks from the lama_jax config's model section.
    kwargs = lama_stand_in.generator_kwargs(root)
    assert (kwargs["ngf"], kwargs["n_downsampling"], kwargs["n_blocks"]) == (8, 2, 1)
    assert kwargs["resnet_conv_kwargs"] == {"ratio_gin": 0.75, "ratio_gout": 0.75, "enable_lfu": False}
    assert math.isfinite(result["parity"]["eval_32_inpainted_max_abs_diff"])
    losses = result["parity"]["first_step_losses"]
    assert all(math.isfinite(losses[name]["torch"]) for name in ("gen_l1", "gen_adv", "gen_total", "discr_total"))
    assert losses["gen_resnet_pl"]["torch"] is None  # a term the stand-in does not report
    # Upstream's own first step on another thread count, beside: the stand-in's tiny step is the same.
    other = "torch_1_thread" if result["threads"]["torch"] > 1 else "torch_2_threads"
    assert losses["gen_l1"][other] == pytest.approx(losses["gen_l1"]["torch"], rel=1e-5)
    updates = result["parity"]["first_step_updates"]
    assert set(updates) == {"generator", "discriminator"}
    params = convert.abstract_variables(build_generator(GENERATOR), (1, 32, 32, 4))["params"]
    assert updates["generator"]["weights"] == sum(leaf.size for leaf in jax.tree.leaves(params))
    assert 0 <= updates["generator"]["share_differing_by_over_1_lr"] <= 1


def test_missing_checkout_is_one_clear_error(tmp_path, capsys):
    status = compare.main(["--lama-root", str(tmp_path), "--skip", *compare.PARTS, "--json"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: cannot import 'saicinpainting' from --lama-root {tmp_path}: it is not an "
                   f"advimman/lama checkout (expected {tmp_path / 'saicinpainting'}/)")


def test_missing_dependency_names_it_and_how_to_install(stand_in, tmp_path, capsys):
    root = tmp_path / "lama"
    shutil.copytree(stand_in[0], root)
    (root / "saicinpainting/training/losses/adversarial.py").write_text("import lama_dependency_not_installed\n")
    status = compare.main(["--lama-root", str(root), "--skip", *compare.PARTS, "--json"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: upstream LaMa needs the module 'lama_dependency_not_installed', which "
                          f"{sys.executable} cannot import; install LaMa's requirements into that interpreter: "
                          "python -m pip install torch ")
    assert '"albumentations==0.5.2"' in err


def test_no_ratio_from_runs_on_different_machines(capsys):
    here = {"hostname": "a", "cpu": "AMD EPYC", "boot_id": "1", "cores": 2}
    assert compare.same_machine(here, dict(here)) is None
    refused = compare.same_machine(here, dict(here, boot_id="2"))
    assert refused == "the two sides ran on different machines (boot_id: '1' vs '2'); no ratio is given"
    figures = {"eval_256": {"lama_jax_s": 1.0, "torch_s": 2.0},
               "loader": {"lama_jax_samples_per_s": 150.0, "torch_samples_per_s": 75.0}}
    compare.add_speedups(figures, refused)
    assert all("speedup" not in f for f in figures.values())
    compare.print_table({"machine": here, "threads": {"torch": 2}, "load_average_before": [1.0] * 3,
                         "load_average_after": [1.5] * 3, "ratios_refused": refused, "figures": figures,
                         "compile_s": {}, "parity": {}})
    out = capsys.readouterr().out
    assert refused in out and "2.00x" not in out and out.count(" -\n") == 2
    compare.add_speedups(figures, None)
    assert figures["eval_256"]["speedup"] == 2.0 and figures["loader"]["speedup"] == 2.0


def test_the_upstream_loader_counts_the_samples_it_produced(stand_in, tmp_path):
    """Three JPEGs and batches of 16: each epoch is one short batch of 3, and 3 is what is counted."""
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), np.full((40, 40, 3), 40 * i, np.uint8))
    worker = compare.upstream_lama.Worker(stand_in[0], threads=1)
    reply = worker.op_loader(str(tmp_path), samples=7, batch_size=16, core=min(compare.os.sched_getaffinity(0)),
                             out_size=32, mask_kwargs={})
    assert reply["samples"] == 9  # three short batches reach 7; a batch_size count would say 16
    assert reply["seconds"] > 0
