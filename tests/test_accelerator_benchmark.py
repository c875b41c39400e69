"""benchmarks/accelerator.py on CPU at --smoke sizes, with the modules a GPU image may lack blocked.

The script must run with only jax, flax, optax, numpy and ml_collections: every run here happens in
a child interpreter where Orbax, Grain, TensorFlow (Datasets), OpenCV and PIL cannot be imported.
"""

import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

from lama_jax.configs import tiny

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "accelerator.py"
BLOCKED = ("grain", "orbax", "tensorflow_datasets", "tensorflow", "cv2", "PIL")
PARTS = ("parity", "bf16", "throughput", "inference", "refinement")


def run_script(*args):
    """The script's JSON, run where importing any BLOCKED module raises ImportError."""
    wrapper = (f"import runpy, sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
               f"sys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    child = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def assert_nulls_have_reasons(tree, path="result"):
    """Every null field has a sibling `<field>_reason` string; every number is finite."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if value is None:
                assert isinstance(tree.get(f"{key}_reason"), str), f"{path}.{key} is null without a reason"
            assert_nulls_have_reasons(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            assert_nulls_have_reasons(value, f"{path}[{i}]")
    elif isinstance(tree, float):
        assert math.isfinite(tree), f"{path} = {tree}"


def assert_machine(machine):
    assert machine["platform"] == "cpu" and machine["device_count"] >= 1
    assert machine["packages"]["jax"] and machine["cores"] >= 1 and len(machine["load_average"]) == 3
    assert machine["nvidia_smi"] is None or machine["nvidia_smi"]


def load_module():
    spec = importlib.util.spec_from_file_location("accelerator_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_budget_skips_every_part_with_a_note():
    result = run_script("--smoke", "--json", "--budget-s", "1")
    assert_machine(result["machine"])
    for part in PARTS:
        assert result[part]["skipped"].startswith("skipped: needs about"), result[part]
    assert result["pytorch"] == {"ratios": None, "ratios_reason": "no --lama-root given"}
    assert_nulls_have_reasons(result)


def test_smoke_parity_and_inference_run_without_the_heavy_modules():
    result = run_script("--smoke", "--json", "--parts", "parity,inference")
    assert_nulls_have_reasons(result)
    checks = result["parity"]["checks"]
    assert len(checks) == 14  # 7 checks, eval and train mode
    checked = {name: c for name, c in checks.items() if c["default"] is not None}
    assert set(checked) == {f"{n}_{m}" for n in ("fourier_unit", "fourier_unit_odd_width", "discriminator")
                            for m in ("eval", "train")}
    for name, check in checked.items():  # CPU float32: both precisions within the parity tests' tolerances
        assert 0 <= check["default"] <= check["tolerance"] and check["highest_within_tolerance"], (name, check)
    assert result["parity"]["all_checked_within_tolerance_highest"] is True
    runs = result["inference"]["runs"]
    assert {(r["size"], r["compute_dtype"]) for r in runs} | {
        (s["size"], s["compute_dtype"]) for s in result["inference"]["skipped"]} == {
        (size, dtype) for size in (32, 64) for dtype in ("float32", "bfloat16")}
    assert runs and all(r["ms_per_image"] > 0 and r["compile_s"] > 0 for r in runs)
    assert all(r["device_peak_bytes_so_far"] is None for r in runs)  # CPU: no device memory statistics
    for part in ("bf16", "throughput", "refinement"):
        assert result[part] == {"skipped": "not in --parts"}


@pytest.mark.slow
def test_smoke_produces_every_field():
    result = run_script("--smoke", "--json", "--budget-s", "1800")  # a busy 2-core machine compiles slowly
    assert_nulls_have_reasons(result)
    assert_machine(result["machine"])
    # A part skipped whole has a note; throughput and inference list the configurations they skipped.
    assert all(result[part].get("skipped", []) == [] for part in PARTS), {p: result[p].get("skipped") for p in PARTS}
    assert all(result[part]["seconds"] > 0 for part in PARTS)

    bf16 = result["bf16"]
    for dtype in ("float32", "bfloat16"):
        assert len(bf16["loss_curves"][dtype]["gen_total"]) == bf16["steps"] == 4
        assert bf16[f"{dtype}_non_finite_metrics"] == 0 and bf16[f"{dtype}_compile_s"] > 0
    assert bf16["all_finite"] and 0 <= bf16["gen_total_max_relative_gap"] < 1
    assert bf16["loss_curves"]["float32"] != bf16["loss_curves"]["bfloat16"]  # two different computations

    steps = result["throughput"]["steps"]
    assert {(s["step_mode"], s["compute_dtype"]) for s in steps} == {
        (m, d) for m in ("reference", "fused") for d in ("float32", "bfloat16")}
    for step in steps:
        assert step["img_per_s"] > 0 and step["ms_per_step"] > 0 and step["gflop_per_step"] > 0
        assert step["achieved_tflop_s"] > 0 and step["program_memory_bytes"] > 0 and step["metrics_finite"]
        assert step["mfu"] is None and "cpu" in step["mfu_reason"]
        assert step["device_peak_bytes_so_far"] is None
    assert result["throughput"]["largest_batch"] is None

    refinement = result["refinement"]
    assert refinement["finite"] and refinement["levels"] == [[16, 16], [32, 32]]
    assert refinement["device_peak_bytes_so_far"] is None and refinement["peak_rss_mb"] > 0
    assert result["pytorch"]["ratios"] is None


def test_pytorch_part_runs_upstream_in_the_interpreter_given(tmp_path):
    pytest.importorskip("torch")
    import lama_stand_in  # pylint: disable=g-import-not-at-top

    model = tiny.get_config().model  # what --smoke runs on both sides
    root = lama_stand_in.write_stand_in(tmp_path / "lama", model.generator, model.discriminator)
    result = run_script("--smoke", "--json", "--parts", "pytorch", "--lama-root", str(root),
                        "--torch-python", sys.executable)
    torch_side = result["pytorch"]
    assert torch_side["device"] == "cpu" and torch_side["torch"]
    assert torch_side["eval"]["size"] == 64 and torch_side["eval"]["ms_per_image"] > 0
    assert [s["per_device_batch"] for s in torch_side["train_steps"]] == [2] and not torch_side["skipped"]
    assert all(s["img_per_s"] > 0 for s in torch_side["train_steps"])
    assert torch_side["ratios"] is None and torch_side["ratios_reason"].startswith("--smoke")
    # Upstream was built with the networks of the config lama_jax's side runs (tiny in --smoke).
    kwargs = lama_stand_in.generator_kwargs(root)
    assert (kwargs["ngf"], kwargs["n_blocks"]) == (model.generator.ngf, model.generator.n_blocks)


def test_pytorch_part_names_an_interpreter_that_cannot_run(tmp_path):
    missing = str(tmp_path / "no-such-python")
    result = run_script("--smoke", "--json", "--parts", "pytorch", "--lama-root", str(tmp_path),
                        "--torch-python", missing)
    assert result["pytorch"]["ratios"] is None and missing in result["pytorch"]["ratios_reason"]


def test_mfu_peaks_known_chips_and_says_why_for_others():
    module = load_module()
    assert module._peak_tflops("NVIDIA H200", "bfloat16") == (989.0, None)
    assert module._peak_tflops("NVIDIA A100-SXM4-80GB", "float32") == (156.0, None)
    for kind in ("NVIDIA H100 PCIe", "cpu", "TPU v5 lite"):
        peak, reason = module._peak_tflops(kind, "bfloat16")
        assert peak is None and kind in reason
    assert [module._grown(b) for b in (1, 15, 24)] == [8, 24, 40]
