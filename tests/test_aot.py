"""lama_jax.aot: ahead-of-time compiles and their reports, on fake CPU devices and a TPU topology."""

import json
import pathlib
import subprocess
import sys

import jax
import pytest

from lama_jax import aot
from lama_jax.configs import tiny

HLO = """
  %all-reduce = f32[3,3,16,32]{3,2,1,0} all-reduce(f32[3,3,16,32]{3,2,1,0} %fusion.20), channel_id=1
  %all-reduce-start.1 = (f32[8]{0}, bf16[2,4]{1,0}) all-reduce-start(f32[8]{0} %a, bf16[2,4]{1,0} %b)
  %all-reduce-done.1 = (f32[8]{0}, bf16[2,4]{1,0}) all-reduce-done((f32[8]{0}, bf16[2,4]{1,0}) %all-reduce-start.1)
  %all-gather = f32[16,4]{1,0} all-gather(f32[4,4]{1,0} %p), dimensions={0}
  %all-reduce.7 = (f32[3,3]{1,0:T(8,128)}, f32[2]{0:T(256)}) all-reduce(f32[3,3]{1,0:T(8,128)} %g, f32[2]{0} %h)
  %add.1 = f32[8]{0} add(f32[8]{0} %x, f32[8]{0} %y), metadata={op_name="all-reduce(fake)"}
"""


def test_collectives_are_counted_once_with_their_bytes():
    assert aot.collectives(HLO) == {
        "all-reduce": {"count": 3, "executions": 3, "bytes": 3 * 3 * 16 * 32 * 4 + 8 * 4 + 8 * 2 + 9 * 4 + 2 * 4},
        "all-gather": {"count": 1, "executions": 1, "bytes": 16 * 4 * 4},
    }


# A scan's backward as XLA TPU prints it: the block gradient is all-reduced inside the loop body.
LOOP_HLO = """
%body.1 (p: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %all-reduce.2 = f32[1,8,8]{2,1,0:T(8,128)S(1)} all-reduce(%fusion.2), channel_id=1, to_apply=%add
}
%condition.1 (p: (s32[], f32[4,8])) -> pred[] {
  %constant.3 = s32[] constant(18)
  ROOT %compare.1 = pred[] compare(%gte, %constant.3), direction=LT
}
%inner_body (p: (s32[])) -> (s32[]) {
  %all-gather.1 = f32[2]{0} all-gather(%y), dimensions={0}
}
%inner_condition (p: (s32[])) -> pred[] {
  %c = s32[] get-tuple-element(%p), index=0
  %d = s32[] parameter(1)
  ROOT %lt = pred[] compare(%c, %d), direction=LT
}
ENTRY %main.5_spmd (param.5: f32[18,8,8]) -> f32[18,8,8] {
  %while.1 = (s32[], f32[4,8]) while(%tuple.1), condition=%condition.1, body=%body.1, metadata={op_name="w"}
  %while.2 = (s32[]) while(%tuple.2), condition=%inner_condition, body=%inner_body
  %all-reduce.9 = f32[16]{0} all-reduce(%z), channel_id=2
}
"""


def test_collectives_in_loops_count_once_per_iteration():
    found = aot.collectives(LOOP_HLO)
    assert found["all-reduce"] == {"count": 2, "executions": 19, "bytes": 18 * 8 * 8 * 4 + 16 * 4,
                                   "loops_of_unknown_trip_count": ["inner_body"]}
    assert found["all-gather"]["count"] == found["all-gather"]["executions"] == 1  # trip count not in the HLO


def test_chip_memory_table():
    assert aot.chip_memory_bytes("TPU v5 lite") == 16 * aot.GIB
    assert aot.chip_memory_bytes("TPU v4") == 32 * aot.GIB
    assert aot.chip_memory_bytes("NVIDIA H200") == 141 * aot.GIB
    assert aot.chip_memory_bytes("cpu") is None


def small_config(**train):
    config = tiny.get_config()
    config.train.update(train)
    return config


def check_data_parallel_report(report, *, devices, programs=("train_step", "predict")):
    assert report["device_count"] == devices and report["global_batch"] == devices
    for program in programs:
        r = report[program]
        assert r["compile_s"] > 0 and r["lower_s"] > 0
        assert r["memory_bytes"]["total"] > 0 and r["memory_bytes"]["arguments"] > 0
        assert r["flops"] > 0
    # The SPMD partitioner of jax 0.10 and 0.11 does not split XLA:CPU's FFT (and the transpose before
    # it) along the batch and all-gathers its operand instead (measured; the README's matrix notes
    # it); 0.12 does.
    fft_gather = {"all-gather"} if jax.__version_info__ < (0, 12) and report["platform"] == "cpu" else set()
    if "train_step" in programs:
        # Data parallelism: gradients (and BN statistics, with global BN) are all-reduced, nothing else.
        assert set(report["train_step"]["collectives"]) == {"all-reduce"} | fft_gather
    if "predict" in programs:
        assert set(report["predict"]["collectives"]) == fft_gather


def test_local_topology_on_eight_cpu_devices():
    devices = aot.topology_devices("local")
    assert len(devices) == 8
    report = aot.compile_report(small_config(), devices, per_device_batch=1, size=32)
    check_data_parallel_report(report, devices=8)
    assert report["train_step"]["memory_capacity_bytes"] is None and report["train_step"]["fits"] is None
    assert report["train_step"]["roofline_step_s"] is None  # no peaks known for a CPU
    assert report["train_step"]["memory_bytes"]["aliases"] > 0  # the donated state
    text = aot.format_report(report)
    assert "8 x cpu" in text and "capacity unknown" in text and "all-reduce x" in text


def test_a_program_that_does_not_fit_gets_the_options_left():
    program = dict(lower_s=6.0, compile_s=286.0, memory_capacity_bytes=16 * aot.GIB, fits=False, flops=1e13,
                   memory_bytes=dict(total=21e9, arguments=1e9, outputs=1e9, temporaries=20e9, aliases=1e9),
                   collectives={})
    report = dict(device_count=4, device_kind="TPU v5 lite", platform="tpu", jax_version=jax.__version__,
                  global_batch=60, per_device_batch=15, size=256, compute_dtype="float32", step_mode="reference",
                  remat_blocks=False, train_step=program)
    text = aot.format_report(report)
    assert "DOES NOT FIT in 16.00 GiB" in text
    assert ("to fit, try: --config.model.generator.remat_blocks=True" in text
            and "--config.train.compute_dtype=bfloat16" in text and "a smaller --per-device-batch" in text)
    report.update(remat_blocks=True, compute_dtype="bfloat16", per_device_batch=1, global_batch=4)
    assert aot.format_report(report).endswith("to fit, try: a chip with more memory")
    program["fits"] = True
    assert "to fit" not in aot.format_report(report)


@pytest.mark.slow
def test_local_topology_with_global_batch_norm():
    report = aot.compile_report(small_config(batch_norm="global"), aot.topology_devices("local"),
                                per_device_batch=1, size=32, programs=("train_step",))
    check_data_parallel_report(report, devices=8, programs=("train_step",))


def test_tpu_topology_generator_forward():
    devices = aot.topology_devices("v5e:2x2")
    assert [d.device_kind for d in devices] == ["TPU v5 lite"] * 4
    report = aot.compile_report(small_config(), devices, per_device_batch=1, size=32, programs=("predict",))
    check_data_parallel_report(report, devices=4, programs=("predict",))
    r = report["predict"]
    assert r["memory_capacity_bytes"] == 16 * aot.GIB and r["fits"] is True
    assert r["estimated_step_s"] > 0 and r["estimated_img_per_s"] > 0
    assert r["bytes_accessed"] > 0 and r["roofline_bound"] in ("compute", "memory")
    assert r["roofline_img_per_s"] == pytest.approx(4 / r["roofline_step_s"])
    assert r["roofline_step_s"] <= r["estimated_step_s"]  # a bound: libtpu's own estimate is above it
    assert "roofline (" in aot.format_program_report(r)


def test_v4_topology_is_one_megacore_device_per_chip():
    devices = aot.topology_devices("v4:2x2x1")
    assert [(d.device_kind, d.core_on_chip) for d in devices] == [("TPU v4", 0)] * 4
    assert aot.chip_memory_bytes(devices[0].device_kind) == 32 * aot.GIB


@pytest.mark.parametrize("topology", ["v4:2x2x1", "v5p:2x2x1"])
def test_discriminator_step_with_r1_compiles_for_tpu_v4_and_v5p(topology):
    """XLA's stride-2 input gradient under R1's double backward aborted these compilers (libtpu
    0.0.50.1), killing the process: this tiny D step at 64x64 was enough. In a subprocess so that
    an abort fails this test, not the run."""
    script = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "compile_parts.py"
    result = subprocess.run([sys.executable, str(script), "--config", "tiny", "--topology", topology,
                             "--per_device_batch", "1", "--size", "64", "--parts", "discriminator_step", "--json"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    part = json.loads(result.stdout.splitlines()[-1])["parts"]["discriminator_step"]
    assert part["flops"] > 0 and part["bytes_accessed"] > 0


def test_roofline_of_known_chips_only():
    # One second of v5e compute (197 TFLOP) moving half a second of its HBM (819 GB/s).
    assert aot.roofline_step_s("TPU v5 lite", 197e12, 819e9 / 2) == (pytest.approx(1.0), "compute")
    assert aot.roofline_step_s("TPU v4", 275e12 / 4, 1200e9) == (pytest.approx(1.0), "memory")
    assert aot.roofline_step_s("cpu", 1e12, 1e9) == (None, None)
    assert aot.roofline_step_s("TPU v5 lite", None, 1e9) == (None, None)


@pytest.mark.slow
def test_tpu_topology_train_step():
    report = aot.compile_report(small_config(), aot.topology_devices("v5e:2x2"), per_device_batch=1, size=32,
                                programs=("train_step",))
    check_data_parallel_report(report, devices=4, programs=("train_step",))
    assert report["train_step"]["fits"] is True


def test_unknown_topology_and_missing_libtpu_are_one_line_errors(monkeypatch):
    result = subprocess.run([sys.executable, "-m", "lama_jax.aot", "--config", "tiny", "--topology", "v9z:9"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: unknown topology 'v9z:9': use a TPU topology name such as v5e:2x2, v4:2x2x1, v5p:2x2x1, "
        "v6e:2x2 or local"]
    with pytest.raises(aot.AotError, match=r"unknown topology 'tpu-v5e': use a TPU topology name such as v5e:2x2"):
        aot.topology_devices("tpu-v5e")
    monkeypatch.setitem(sys.modules, "libtpu", None)  # import libtpu now raises ImportError
    with pytest.raises(aot.AotError, match=r"needs libtpu: pip install 'lama_jax\[tpu\]'"):
        aot.topology_devices("v5e:2x2")


CONV_LOOP_HLO = """
%fused_conv (param_0: f32[2,8,8,4], param_1: f32[3,3,4,16]) -> f32[2,8,8,16] {
  %param_0 = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,4,16]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[2,8,8,16]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%body (p: (s32[], f32[2,8,8,4])) -> (s32[], f32[2,8,8,4]) {
  %p = (s32[], f32[2,8,8,4]{3,2,1,0}) parameter(0)
  %x = f32[2,8,8,4]{3,2,1,0} get-tuple-element(%p), index=1
  %k = f32[3,3,4,16]{3,2,1,0} constant({...})
  %fusion.1 = f32[2,8,8,16]{3,2,1,0} fusion(%x, %k), kind=kOutput, calls=%fused_conv
  %w = f32[16,4]{1,0} constant({...})
  %dot.1 = f32[2,8,8,4]{3,2,1,0} dot(%fusion.1, %w), lhs_contracting_dims={3}, rhs_contracting_dims={0}
  ROOT %t = (s32[], f32[2,8,8,4]{3,2,1,0}) tuple(%p, %dot.1)
}

ENTRY %main (a: f32[2,8,8,4]) -> f32[2,8,8,4] {
  %a = f32[2,8,8,4]{3,2,1,0} parameter(0)
  %while.1 = (s32[], f32[2,8,8,4]{3,2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
}
"""


def test_loop_repeats_add_what_xla_counts_once():
    repeats = aot.loop_repeats(CONV_LOOP_HLO)
    conv = 2 * (2 * 8 * 8 * 16) * 9 * 4  # the fused convolution, reached through the loop body
    dot = 2 * (2 * 8 * 8 * 4) * 16
    assert repeats["flops"] == 4 * (conv + dot)
    # The body's own instructions: the fusion (operands x, k; output) and the dot (operands, output).
    fusion_bytes = 4 * (2 * 8 * 8 * 4 + 3 * 3 * 4 * 16 + 2 * 8 * 8 * 16)
    dot_bytes = 4 * (2 * 8 * 8 * 16 + 16 * 4 + 2 * 8 * 8 * 4)
    assert repeats["bytes"] == 4 * (fusion_bytes + dot_bytes)
    assert aot.loop_repeats(CONV_LOOP_HLO.replace("while(", "call(")) == {"flops": 0, "bytes": 0}


SCAN_BODY_HLO = """
%slice_weight (param_0: f32[4,3,3,8,128], param_1: s32[]) -> f32[3,3,8,128] {
  %param_0 = f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)} parameter(0)
  %param_1 = s32[]{:T(128)} parameter(1)
  %zero = s32[]{:T(128)} constant(0)
  %ds = f32[1,3,3,8,128]{4,3,2,1,0:T(8,128)} dynamic-slice(%param_0, %param_1, %zero, %zero, %zero, %zero), dynamic_slice_sizes={1,3,3,8,128}
  ROOT %kernel = f32[3,3,8,128]{3,2,1,0:T(8,128)} bitcast(%ds)
}

%conv_with_weight (param_0: f32[2,8,8,8], param_1: f32[4,3,3,8,128], param_2: s32[]) -> f32[2,8,8,128] {
  %param_0 = f32[2,8,8,8]{3,2,1,0:T(8,128)} parameter(0)
  %param_1 = f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)} parameter(1)
  %param_2 = s32[]{:T(128)} parameter(2)
  %w = f32[3,3,8,128]{3,2,1,0:T(8,128)} fusion(%param_1, %param_2), kind=kLoop, calls=%slice_weight
  ROOT %conv = f32[2,8,8,128]{3,2,1,0:T(8,128)} convolution(%param_0, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%save_activation (param_0: f32[4,2,8,8,128], param_1: f32[2,8,8,128], param_2: s32[]) -> f32[4,2,8,8,128] {
  %param_0 = f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)} parameter(0)
  %param_1 = f32[2,8,8,128]{3,2,1,0:T(8,128)} parameter(1)
  %param_2 = s32[]{:T(128)} parameter(2)
  %zero = s32[]{:T(128)} constant(0)
  %update = f32[1,2,8,8,128]{4,3,2,1,0:T(8,128)} bitcast(%param_1)
  ROOT %dus = f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)} dynamic-update-slice(%param_0, %update, %param_2, %zero, %zero, %zero, %zero)
}

%body (p: (s32[], f32[2,8,8,8], f32[4,3,3,8,128], f32[4,2,8,8,128])) -> (s32[], f32[2,8,8,8], f32[4,3,3,8,128], f32[4,2,8,8,128]) {
  %p = (s32[], f32[2,8,8,8]{3,2,1,0:T(8,128)}, f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)}, f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)}) parameter(0)
  %i = s32[]{:T(128)} get-tuple-element(%p), index=0
  %x = f32[2,8,8,8]{3,2,1,0:T(8,128)} get-tuple-element(%p), index=1
  %weights = f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)} get-tuple-element(%p), index=2
  %saved = f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)} get-tuple-element(%p), index=3
  %y = f32[2,8,8,128]{3,2,1,0:T(8,128)} fusion(%x, %weights, %i), kind=kOutput, calls=%conv_with_weight
  %saved.1 = f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)} fusion(%saved, %y, %i), kind=kLoop, calls=%save_activation
  ROOT %t = (s32[], f32[2,8,8,8]{3,2,1,0:T(8,128)}, f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)}, f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)}) tuple(%i, %x, %weights, %saved.1)
}

ENTRY %main (a: f32[2,8,8,8]) -> f32[4,2,8,8,128] {
  %while.1 = (s32[], f32[2,8,8,8]{3,2,1,0:T(8,128)}, f32[4,3,3,8,128]{4,3,2,1,0:T(8,128)}, f32[4,2,8,8,128]{4,3,2,1,0:T(8,128)}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"4"}}
}
"""


def test_loop_bytes_count_slices_of_stacked_buffers_and_tile_padding():
    """A scan's body reads one block's slice of the stacked weights and writes one block's slice of
    the saved activations; a TPU tile pads the minor dimensions (8 channels to 128 here)."""
    assert aot._tiled_bytes("f32[2,8,8,8]{3,2,1,0:T(8,128)}") == 4 * 2 * 8 * 8 * 128
    assert aot._tiled_bytes("f32[1,4,4,16]{3,0,2,1:T(1,128)S(1)}") == 4 * 4 * 4 * 128
    assert aot._tiled_bytes("(f32[48]{0:T(128)}, bf16[3,5]{1,0})") == 4 * 128 + 2 * 15
    repeats = aot.loop_repeats(SCAN_BODY_HLO)
    assert repeats["flops"] == 3 * 2 * (2 * 8 * 8 * 128) * 9 * 8
    x = 4 * 2 * 8 * 8 * 128  # f32[2,8,8,8] padded to 128 channels
    kernel_slice = 4 * 3 * 3 * 8 * 128
    activation = 4 * 2 * 8 * 8 * 128
    index = 4
    conv_fusion = x + kernel_slice + index + activation
    save_fusion = activation + index + activation  # reads the update; writes it in place
    assert repeats["bytes"] == 3 * (conv_fusion + save_fusion)


def test_tpu_flops_and_bytes_count_every_iteration_of_the_block_loop():
    """TPU runs the generator's blocks as a loop, whose body XLA's cost analysis counts once: with
    the repeats added, the loop program's FLOPs are the unrolled program's. The byte model that
    counts the repeats gives XLA's own bytes for the whole unrolled program."""
    devices = aot.topology_devices("v5e:2x2")
    reports = {}
    for block_loop in ("scan", "unrolled"):
        config = small_config()
        with config.unlocked():
            config.model.generator.block_loop = block_loop
        compiled, _, _ = aot.compile_programs(config, devices, per_device_batch=1, size=64,
                                              programs=("predict",))["predict"]
        reports[block_loop] = aot.describe_compiled(compiled, device_kind=devices[0].device_kind,
                                                    batch_per_step=len(devices))
    scanned, unrolled = reports["scan"], reports["unrolled"]
    assert scanned["loop_repeats_added"]["flops"] > 0 and unrolled["loop_repeats_added"] == {"flops": 0, "bytes": 0}
    assert scanned["flops"] == pytest.approx(unrolled["flops"], rel=0.02)
    assert scanned["bytes_accessed"] == pytest.approx(unrolled["bytes_accessed"], rel=0.1)
    hlo = compiled.as_text()  # the unrolled program
    computations = aot._computations(hlo)
    entry = next(line.split()[1].lstrip("%") for line in hlo.splitlines() if line.startswith("ENTRY"))
    traffic = aot._Traffic(computations)
    modelled = sum(traffic.moved(entry, name) for name, ins in traffic.instructions(entry).items()
                   if ins["op"] not in aot._NO_TRAFFIC)
    assert modelled == pytest.approx(unrolled["bytes_accessed"], rel=0.05)
