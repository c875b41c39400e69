r"""Compiles the training step ahead of time and says whether a run fits, before anyone rents a chip.

    python -m lama_jax.aot --config big_lama --topology v5e:2x2 --per-device-batch 15 [--size 256] \
        [--config.train.compute_dtype=bfloat16] [--json]

`--topology` is a TPU topology name (`v5e:2x2`, `v4:2x2x1`, `v5p:2x2x1`, `v6e:2x2`, ...), compiled with
libtpu on a machine that has no TPU (`pip install "lama_jax[tpu]"`), or `local` for this machine's
own devices (CPU or GPU). The jitted train step and the evaluation predict function are lowered and
compiled on a data-parallel mesh over all of the topology's devices, from abstract state: nothing
is allocated and nothing runs. The report: per-device memory from the compiler (arguments,
outputs, temporaries, aliased buffers, total) against the chip's capacity, FLOPs per device per
step, the compiler's own step-time estimate where the backend gives one (`optimal_seconds` on TPU)
and the images/s it implies, on TPU the roofline bound of the program's FLOPs and HBM bytes against
the chip's peaks (libtpu gives no estimate for programs as large as the big-lama step), and every
collective of the compiled program with counts and bytes.

`lama_jax.train` logs the same report for the step it compiles (`describe_compiled`).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

GIB = 2**30
# HBM per chip, by device kind as JAX reports it (`device.device_kind`), matched by prefix.
CHIP_MEMORY_GIB = (
    ("TPU v4", 32),
    ("TPU v5 lite", 16),  # v5e
    ("TPU v5e", 16),
    ("TPU v5p", 95),
    ("TPU v5", 95),  # v5p reports itself as "TPU v5"
    ("TPU v6 lite", 32),  # v6e (Trillium)
    ("TPU v6e", 32),
    ("NVIDIA H100", 80),
    ("NVIDIA H200", 141),
)
# Peak bf16 matrix TFLOP/s and HBM GB/s per TPU chip (Cloud TPU's system-architecture pages). XLA
# TPU runs float32 convolutions at the default precision as bf16 passes, so one peak serves both.
TPU_PEAKS = (
    ("TPU v4", 275.0, 1200.0),
    ("TPU v5 lite", 197.0, 819.0),  # v5e
    ("TPU v5e", 197.0, 819.0),
    ("TPU v5p", 459.0, 2765.0),
    ("TPU v5", 459.0, 2765.0),  # v5p
    ("TPU v6 lite", 918.0, 1640.0),  # v6e
    ("TPU v6e", 918.0, 1640.0),
)
TOPOLOGY_EXAMPLES = "v5e:2x2, v4:2x2x1, v5p:2x2x1, v6e:2x2 or local"
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}


class AotError(ValueError):
    """A topology or request that cannot be compiled; the message says what would work."""


def roofline_step_s(device_kind: str, flops: Optional[float], bytes_accessed: Optional[float]):
    """(seconds, "compute" or "memory") no chip of this kind can beat for a program of `flops` FLOPs
    moving `bytes_accessed` bytes of HBM, or (None, None) for a chip not in TPU_PEAKS."""
    for prefix, tflops, gb_per_s in TPU_PEAKS:
        if device_kind.startswith(prefix) and flops and bytes_accessed:
            compute, memory = flops / (tflops * 1e12), bytes_accessed / (gb_per_s * 1e9)
            return max(compute, memory), "compute" if compute >= memory else "memory"
    return None, None


def chip_memory_bytes(device_kind: str) -> Optional[int]:
    """HBM of one chip of this kind, or None when the kind is not in CHIP_MEMORY_GIB."""
    for prefix, gib in CHIP_MEMORY_GIB:
        if device_kind.startswith(prefix):
            return gib * GIB
    return None


def topology_devices(topology: str) -> List[Any]:
    """The devices of `topology`: this machine's for "local", else a TPU topology built by libtpu."""
    if topology == "local":
        return jax.devices()
    if not re.fullmatch(r"v\d+[a-z]*(-\w+)?:\d+(x\d+){1,2}", topology):
        raise AotError(f"unknown topology {topology!r}: use a TPU topology name such as {TOPOLOGY_EXAMPLES}")
    try:
        import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    except ImportError:
        raise AotError(f"compiling for TPU topology {topology!r} needs libtpu: pip install "
                       f"'lama_jax[tpu]' (jax[tpu]=={jax.__version__} brings the libtpu this jax pins)") from None
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

    try:
        devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
        if any(getattr(d, "core_on_chip", 0) for d in devices):
            # Two TensorCores per chip (v4): TPU VMs run them as one "megacore" device, and JAX's
            # meshes over such chips take one device per chip.
            devices = list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                                        chip_config_name="megacore").devices)
        return devices
    except Exception as e:  # libtpu's own message for a malformed or unsupported name is long
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "lockfile" in first_line:  # another process holds libtpu (only one may, by default)
            raise AotError("libtpu is in use by another process; wait for it, or set ALLOW_MULTIPLE_LIBTPU_LOAD=1 "
                           "(safe here: compiling for a topology uses no TPU)") from None
        raise AotError(f"unknown topology {topology!r} ({first_line[:160]}): use e.g. {TOPOLOGY_EXAMPLES}") from None


_COMPUTATION_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$")
_WHILE = re.compile(r"\swhile\(.*\bcondition=%?(?P<condition>[\w.\-]+), body=%?(?P<body>[\w.\-]+)")
_TRIP_COUNT = re.compile(r'known_trip_count[^0-9]*(?P<n>\d+)')


def _computations(hlo_text: str) -> Dict[str, List[str]]:
    """{computation name: its instruction lines}; lines outside any computation go under ""."""
    computations: Dict[str, List[str]] = {"": []}
    current = ""
    for line in hlo_text.splitlines():
        header = _COMPUTATION_HEADER.match(line)
        if header:
            current = header["name"]
            computations[current] = []
        elif line.startswith("}"):
            current = ""
        else:
            computations[current].append(line)
    return computations


def _trip_count(while_line: str, condition: List[str]) -> Optional[int]:
    """Iterations of a while loop: XLA's known_trip_count, else the one integer constant its
    condition compares the counter with (`lax.scan` and `fori_loop` loops); None if neither."""
    known = _TRIP_COUNT.search(while_line)
    if known:
        return int(known["n"])
    constants = {int(c) for line in condition for c in re.findall(r"\bconstant\((\d+)\)", line)}
    if len(constants) == 1 and any("compare(" in line and "direction=LT" in line for line in condition):
        return constants.pop()
    return None


_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\((?:[^()]|\([^()]*\))*\)|"
                          r"[a-z]+\d*\[[\d,]*\](?:\{[^}]*\})?)\s+(?P<op>[\w\-]+)\((?P<operands>[^)]*)\)(?P<attrs>.*)$")
_CALLEES = re.compile(r"\b(?:calls|to_apply|body|condition|branch_computations)=\{?"
                      r"(?P<names>%?[\w.\-]+(?:,\s*%?[\w.\-]+)*)\}?")
# Instructions that move no data of their own (bytes are counted where the data is used).
_NO_TRAFFIC = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "after-all",
               "partition-id", "replica-id", "opt-barrier"}


# One array of an HLO shape: dtype, dimensions and, where shown, its layout's minor-to-major
# order and first tile (`f32[2,8]{1,0:T(8,128)}`).
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\](?:\{([\d,]*)(?::[^}]*?T\(([\d,]+)\))?[^}]*\})?")


def _arrays(shape: str, tiled: bool = False) -> List[tuple]:
    """[(dtype, dimensions)] of `shape`; `tiled`: each dimension padded as its TPU tile lays it out
    in memory (`T(8,128)` pads the two most-minor dimensions to multiples of 8 and 128)."""
    arrays = []
    for dtype, dims, minor_to_major, tile in _ARRAY.findall(shape):
        sizes = [int(d) for d in dims.split(",") if d]
        if tiled and tile and minor_to_major:
            order = [int(d) for d in minor_to_major.split(",")]
            for dim, multiple in zip(order, reversed([int(t) for t in tile.split(",")])):
                sizes[dim] = -(-sizes[dim] // multiple) * multiple
        arrays.append((dtype, tuple(sizes)))
    return arrays


def _bytes(shape: str) -> int:
    """Bytes of the data in `shape` (what a collective sends)."""
    return sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(dims) for dtype, dims in _arrays(shape))


def _tiled_bytes(shape: str) -> int:
    """Bytes of `shape` as laid out in memory, as XLA's cost analysis counts them."""
    return sum(_DTYPE_BYTES.get(dtype, 4) * math.prod(dims) for dtype, dims in _arrays(shape, tiled=True))


def _run_counts(computations: Dict[str, List[str]]):
    """`runs(computation) -> (times it runs per step, loops of unknown trip count on the way)`: the
    product of the trip counts of the while loops holding it, through fusions and calls."""
    caller: Dict[str, str] = {}
    loops: Dict[str, Optional[int]] = {}  # body -> iterations, None if the HLO does not show them
    for name, lines in computations.items():
        for line in lines:
            match = _WHILE.search(line)
            if match:
                loops[match["body"]] = _trip_count(line, computations.get(match["condition"], []))
            for callees in _CALLEES.finditer(line):
                for callee in re.split(r",\s*", callees["names"]):
                    caller.setdefault(callee.lstrip("%"), name)

    def runs(name: Optional[str], depth: int = 0) -> tuple:
        if not name or depth > 64:
            return 1, set()
        outer, unknown = runs(caller.get(name), depth + 1)
        if name not in loops:
            return outer, unknown
        if loops[name] is None:
            return outer, unknown | {name}
        return loops[name] * outer, unknown

    return runs


def collectives(hlo_text: str) -> Dict[str, Dict[str, int]]:
    """{op: {"count", "executions", "bytes"}} of the collectives in optimised HLO text, per step.

    `count` is the number of collective instructions (async start/done pairs counted once);
    one inside a while loop runs once per iteration (on TPU the generator's blocks are a loop
    and each block's gradient is all-reduced inside it), so `executions` and `bytes` (what one
    device sends into the collectives per step) multiply by the trip count. A loop whose trip
    count the HLO does not show counts once and is listed in `loops_of_unknown_trip_count`.
    """
    computations = _computations(hlo_text)
    runs = _run_counts(computations)
    unknown = set()
    found: Dict[str, Dict[str, int]] = {}
    # The result shape is one array (`f32[8,128]{1,0:T(8,128)}`) or a tuple of them, as the
    # collective combiners make; layouts may hold one level of parentheses.
    shape = r"\((?:[^()]|\([^()]*\))*\)|\S+"
    pattern = re.compile(r"=\s*(?P<shape>" + shape + r")\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
    for name, lines in computations.items():
        for line in lines:
            match = pattern.search(line)
            if not match:
                continue
            size = _bytes(match["shape"])
            executions, unknown_loops = runs(name)
            unknown |= unknown_loops
            entry = found.setdefault(match["op"], {"count": 0, "executions": 0, "bytes": 0})
            entry["count"] += 1
            entry["executions"] += executions
            entry["bytes"] += size * executions
    if unknown:
        for entry in found.values():
            entry["loops_of_unknown_trip_count"] = sorted(unknown)
    return found


def _matmul_flops(op: str, shape: str, operand_shapes: List[str], attrs: str) -> int:
    """2 x output elements x contracted size, for a convolution or dot; 0 for other ops."""
    if op not in ("convolution", "dot") or len(operand_shapes) < 2 or not all(operand_shapes[:2]):
        return 0
    outputs = math.prod(_arrays(shape)[0][1])
    if op == "convolution":
        labels = re.search(r"dim_labels=\w+_(\w+)->", attrs)
        kernel = _arrays(operand_shapes[1])[0][1]
        if not labels or len(labels[1]) != len(kernel):
            return 0
        window = math.prod(size for size, label in zip(kernel, labels[1]) if label.isdigit())
        return 2 * outputs * window * kernel[labels[1].index("i")]
    lhs = _arrays(operand_shapes[0])[0][1]
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
    return 2 * outputs * (math.prod(lhs[int(d)] for d in dims[1].split(",") if d) if dims else 1)


class _Traffic:
    """HBM bytes one instruction moves, counted as XLA's cost analysis does: arrays at their tiled
    size (`_tiled_bytes`), an operand that is only sliced (`dynamic-slice`, also inside fusions)
    read slice by slice, and a buffer updated in place (`dynamic-update-slice`) costing the update,
    not the whole buffer. A scan's stacked weights and saved activations are such buffers:
    counted whole, every iteration would be charged all 18 blocks' arrays."""

    def __init__(self, computations: Dict[str, List[str]]):
        self._instructions: Dict[str, Dict[str, Any]] = {}
        for name, lines in computations.items():
            parsed = {}
            for m in filter(None, map(_INSTRUCTION.match, lines)):
                parsed[m["name"]] = dict(op=m["op"], shape=m["shape"], attrs=m["attrs"], root=m[0].lstrip().startswith("ROOT"),
                                         operands=re.findall(r"%([\w.\-]+)", m["operands"]),
                                         parameter=int(m["operands"]) if m["op"] == "parameter" else None)
            self._instructions[name] = parsed

    def instructions(self, computation: str) -> Dict[str, Dict[str, Any]]:
        return self._instructions.get(computation, {})

    def moved(self, computation: str, name: str) -> int:
        """Bytes read and written by instruction `name` of `computation`."""
        table = self.instructions(computation)
        ins = table[name]
        operands = [table.get(o) for o in ins["operands"]]
        if ins["op"] in ("slice", "dynamic-slice"):
            return 2 * _tiled_bytes(ins["shape"])
        if ins["op"].endswith("-done"):
            return 0  # an async pair's data is counted at its start
        if ins["op"] == "dynamic-update-slice":
            return 2 * _tiled_bytes(operands[1]["shape"]) if operands[1] else _tiled_bytes(ins["shape"])
        if ins["op"] == "fusion":
            fused = self._callee(ins)
            read = sum(self._read(fused, i, o["shape"]) for i, o in enumerate(operands) if o)
            return read + self._written(fused, ins["shape"])
        return _tiled_bytes(ins["shape"]) + sum(_tiled_bytes(o["shape"]) for o in operands if o)

    @staticmethod
    def _callee(ins) -> Optional[str]:
        match = re.search(r"\bcalls=%?([\w.\-]+)", ins["attrs"])
        return match[1] if match else None

    def _read(self, fused: Optional[str], index: int, shape: str, depth: int = 0) -> int:
        """Bytes a fusion reads of its operand `index` (of `shape`)."""
        table = self.instructions(fused) if fused else {}
        param = next((n for n, i in table.items() if i["parameter"] == index), None)
        if param is None or depth > 16:
            return _tiled_bytes(shape)
        return min(_tiled_bytes(shape), self._use(table, param, depth))

    def _use(self, table: Dict[str, Dict[str, Any]], value: str, depth: int) -> int:
        """Bytes of `value` (of a fused computation `table`) that its users read."""
        total = 0
        for user_name, user in table.items():
            if value not in user["operands"]:
                continue
            position = user["operands"].index(value)
            if user["op"] == "dynamic-slice" and position == 0:
                total += _tiled_bytes(user["shape"])
            elif user["op"] == "dynamic-update-slice" and position == 0:
                pass  # updated in place: the write is counted with the fusion's output
            elif user["op"] == "bitcast":
                total += self._use(table, user_name, depth)
            elif user["op"] == "fusion":
                total += self._read(self._callee(user), position, table[value]["shape"], depth + 1)
            else:
                return _tiled_bytes(table[value]["shape"])
        return total

    def _written(self, fused: Optional[str], shape: str) -> int:
        """Bytes a fusion writes: its output, less what dynamic-update-slices leave untouched."""
        table = self.instructions(fused) if fused else {}
        root = next((i for i in table.values() if i["root"]), None)
        if root is None:
            return _tiled_bytes(shape)
        parts = [table.get(o) for o in root["operands"]] if root["op"] == "tuple" else [root]
        written = 0
        for part in parts:
            if part is None:
                continue
            if part["op"] == "dynamic-update-slice" and table.get(part["operands"][1]):
                written += _tiled_bytes(table[part["operands"][1]]["shape"])
            else:
                written += _tiled_bytes(part["shape"])
        return written


def loop_repeats(hlo_text: str) -> Dict[str, int]:
    """What XLA's cost analysis leaves out of a program with while loops: it counts each loop body
    once. Returns {"flops", "bytes"} of the repeats: (iterations - 1) x the convolution and dot
    FLOPs of every computation run inside loops (fusions included), and the HBM bytes the loop
    bodies' own instructions move (`_Traffic`; nested loops multiply)."""
    computations = _computations(hlo_text)
    runs = _run_counts(computations)
    traffic_of = _Traffic(computations)
    loop_bodies = {m["body"] for lines in computations.values() for m in map(_WHILE.search, lines) if m}
    flops = traffic = 0
    for name in computations:
        repeats = runs(name)[0] - 1
        if repeats <= 0:
            continue
        table = traffic_of.instructions(name)
        for instruction, ins in table.items():
            operand_shapes = [table[o]["shape"] if o in table else "" for o in ins["operands"]]
            flops += repeats * _matmul_flops(ins["op"], ins["shape"], operand_shapes, ins["attrs"])
            if name in loop_bodies and ins["op"] not in _NO_TRAFFIC:
                traffic += repeats * traffic_of.moved(name, instruction)
    return {"flops": flops, "bytes": traffic}


def describe_compiled(compiled, *, device_kind: str, batch_per_step: int) -> Dict[str, Any]:
    """Memory, FLOPs, step-time estimate and collectives of one compiled program, per device."""
    report: Dict[str, Any] = {}
    memory = compiled.memory_analysis()
    if memory is not None:
        fields = dict(arguments=memory.argument_size_in_bytes, outputs=memory.output_size_in_bytes,
                      temporaries=memory.temp_size_in_bytes, aliases=memory.alias_size_in_bytes,
                      generated_code=memory.generated_code_size_in_bytes)
        # Donated arguments alias outputs: those bytes are counted once.
        fields["total"] = (fields["arguments"] + fields["outputs"] - fields["aliases"] + fields["temporaries"]
                           + fields["generated_code"])
        capacity = chip_memory_bytes(device_kind)
        report["memory_bytes"] = fields
        report["memory_capacity_bytes"] = capacity
        report["fits"] = None if capacity is None else bool(fields["total"] <= capacity)
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else None
    cost = cost or {}
    hlo_text = compiled.as_text()
    # XLA's cost analysis counts a loop body once (TPU runs the generator's blocks as a loop): the
    # report adds the other iterations. Compiled for v5e, the tiny generator's loop program then
    # comes within 1 % of the unrolled program's FLOPs and 3 % of its bytes (predict), and 2 % and
    # 10 % (gradient, 6 blocks); the byte model gives XLA's bytes for an unrolled program within 3 %.
    repeats = loop_repeats(hlo_text)
    report["flops"] = float(cost["flops"]) + repeats["flops"] if "flops" in cost else None
    report["loop_repeats_added"] = repeats
    seconds = cost.get("optimal_seconds")
    report["estimated_step_s"] = float(seconds) if seconds and seconds > 0 else None
    report["estimated_img_per_s"] = (batch_per_step / seconds) if report["estimated_step_s"] else None
    # libtpu gives no optimal_seconds for large programs (the big-lama step among them): the roofline
    # of its FLOPs and HBM bytes is then the estimate there is, a bound that real steps stay above.
    report["bytes_accessed"] = (float(cost["bytes accessed"]) + repeats["bytes"]) if "bytes accessed" in cost else None
    roofline, bound = roofline_step_s(device_kind, report["flops"], report["bytes_accessed"])
    report["roofline_step_s"], report["roofline_bound"] = roofline, bound
    report["roofline_img_per_s"] = batch_per_step / roofline if roofline else None
    report["collectives"] = collectives(hlo_text)
    return report


def abstract_batch(mesh, global_batch: int, size: int) -> Dict[str, jax.ShapeDtypeStruct]:
    from lama_jax import train_step  # pylint: disable=g-import-not-at-top

    sharding = NamedSharding(mesh, PartitionSpec(train_step.DATA_AXIS))
    return {"image": jax.ShapeDtypeStruct((global_batch, size, size, 3), jnp.float32, sharding=sharding),
            "mask": jax.ShapeDtypeStruct((global_batch, size, size, 1), jnp.float32, sharding=sharding)}


def _timed_compile(jitted, *args) -> tuple:
    started = time.perf_counter()
    lowered = jitted.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered_at - started, time.perf_counter() - lowered_at


def compile_programs(config, devices: Sequence[Any], *, per_device_batch: int, size: int = 256,
                     programs: Sequence[str] = ("train_step", "predict")) -> Dict[str, tuple]:
    """{program: (compiled, lower_s, compile_s)} for `programs` of `config` on a data-parallel mesh
    over `devices`, from abstract inputs only."""
    from lama_jax import train_checkpoint, train_step  # pylint: disable=g-import-not-at-top

    if per_device_batch < 1:
        raise AotError(f"--per-device-batch must be at least 1, got {per_device_batch}")
    if size < 16 or size % 8:
        raise AotError(f"--size must be a multiple of 8 and at least 16, got {size}")
    mesh = train_step.make_mesh(devices)
    global_batch = per_device_batch * len(devices)
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = global_batch
    batch = abstract_batch(mesh, global_batch, size)
    state = train_checkpoint.abstract_train_state(config, mesh)
    compiled = {}
    if "train_step" in programs:
        compiled["train_step"] = _timed_compile(train_step.make_train_step(config, mesh), state, batch)
    if "predict" in programs:
        compiled["predict"] = _timed_compile(train_step.make_predict_fn(config, mesh), state["generator"], batch)
    return compiled


def compile_report(config, devices: Sequence[Any], *, per_device_batch: int, size: int = 256,
                   programs: Sequence[str] = ("train_step", "predict")) -> Dict[str, Any]:
    """Compiles `programs` of `config` for `devices` (abstract inputs only) and reports on each."""
    compiled = compile_programs(config, devices, per_device_batch=per_device_batch, size=size, programs=programs)
    global_batch = per_device_batch * len(devices)
    device_kind = devices[0].device_kind
    report: Dict[str, Any] = dict(
        platform=devices[0].platform, device_kind=device_kind, device_count=len(devices),
        global_batch=global_batch, per_device_batch=per_device_batch, size=size,
        compute_dtype=config.train.compute_dtype, step_mode=config.train.step_mode,
        batch_norm=config.train.batch_norm, remat_blocks=bool(config.model.generator.get("remat_blocks", False)),
        jax_version=jax.__version__)
    for program, (program_compiled, lower_s, compile_s) in compiled.items():
        report[program] = dict(lower_s=lower_s, compile_s=compile_s,
                               **describe_compiled(program_compiled, device_kind=device_kind,
                                                   batch_per_step=global_batch))
    return report


# ---------------------------------------------------------------------------------------------
# Report text


def _gib(n: Optional[float]) -> str:
    return "?" if n is None else f"{n / GIB:.2f} GiB"


def format_program_report(r: Dict[str, Any]) -> str:
    """One program's `describe_compiled` fields as `; `-separated phrases."""
    parts = []
    memory = r.get("memory_bytes")
    if memory:
        capacity = r["memory_capacity_bytes"]
        verdict = ("capacity unknown" if capacity is None else
                   f"{'fits' if r['fits'] else 'DOES NOT FIT'} in {_gib(capacity)}")
        parts.append(f"memory per device {_gib(memory['total'])} ({verdict}: arguments {_gib(memory['arguments'])}, "
                     f"outputs {_gib(memory['outputs'])}, temporaries {_gib(memory['temporaries'])}, "
                     f"aliased {_gib(memory['aliases'])})")
    if r.get("flops") is not None:
        parts.append(f"{r['flops'] / 1e9:,.1f} GFLOP per device per step")
    if r.get("estimated_step_s"):
        parts.append(f"compiler's step estimate {r['estimated_step_s'] * 1e3:.1f} ms = "
                     f"{r['estimated_img_per_s']:.1f} img/s")
    if r.get("roofline_step_s"):
        parts.append(f"roofline ({r['roofline_bound']}-bound) {r['roofline_step_s'] * 1e3:.1f} ms = at most "
                     f"{r['roofline_img_per_s']:.1f} img/s")
    shown = ", ".join(f"{op} x{c['count']}" + (f" run {c['executions']} times" if c["executions"] != c["count"] else "")
                      + f" ({c['bytes'] / 2**20:.1f} MiB per step)" for op, c in r["collectives"].items())
    parts.append(f"collectives: {shown or 'none'}")
    return "; ".join(parts)


def format_report(report: Dict[str, Any]) -> str:
    lines = [f"{report['device_count']} x {report['device_kind']} ({report['platform']}), jax "
             f"{report['jax_version']}: batch {report['global_batch']} ({report['per_device_batch']} per device), "
             f"{report['size']}^2, {report['compute_dtype']}, step_mode {report['step_mode']}"]
    for program in ("train_step", "predict"):
        if program in report:
            r = report[program]
            lines.append(f"{program}: lower {r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s")
            lines.extend("  " + part for part in format_program_report(r).split("; "))
            if r.get("fits") is False:
                lines.append("  " + _memory_options(report))
    return "\n".join(lines)


def _memory_options(report: Dict[str, Any]) -> str:
    """What lowers a program's memory that `report`'s run does not use yet."""
    options = []
    if not report.get("remat_blocks"):
        options.append("--config.model.generator.remat_blocks=True (recompute the generator blocks' "
                       "activations in the backward pass)")
    if report.get("compute_dtype") == "float32":
        options.append("--config.train.compute_dtype=bfloat16")
    if report["per_device_batch"] > 1:
        options.append("a smaller --per-device-batch")
    return "to fit, try: " + "; or ".join(options or ["a chip with more memory"])


# ---------------------------------------------------------------------------------------------
# Command line (absl flags, so that --config.key=value overrides work as in lama_jax.train)

if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from lama_jax import config_loader

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Experiment config: a packaged name (big_lama, lama_fourier, tiny) or a file, "
        "optionally :arg; override keys with --config.key=value.", lock_config=True)
    _TOPOLOGY = flags.DEFINE_string("topology", None, f"Where to compile: {TOPOLOGY_EXAMPLES}.")
    _PER_DEVICE_BATCH = flags.DEFINE_integer("per-device-batch", None,
                                             "Images per device (default: the config's batch_size / devices).")
    _SIZE = flags.DEFINE_integer("size", 256, "Training crop side in pixels.")
    _JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    flags.mark_flags_as_required(["config", "topology"])

    def _parse(argv):
        try:
            return flags.FLAGS(config_loader.resolve_config_argv(argv))
        except FileNotFoundError as e:
            sys.exit(f"error: --config: {e}")

    def main(argv) -> None:
        if len(argv) > 1:
            sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
        try:
            devices = topology_devices(_TOPOLOGY.value)
            per_device = _PER_DEVICE_BATCH.value or max(1, _CONFIG.value.batch_size // len(devices))
            report = compile_report(_CONFIG.value, devices, per_device_batch=per_device, size=_SIZE.value)
        except AotError as e:
            sys.exit(f"error: {e}")
        print(json.dumps(report, default=float) if _JSON.value else format_report(report))

    app.run(main, flags_parser=_parse)
