"""Tests for lama_jax.torch_pickle on files written by real torch.save (zip and legacy format)."""
import builtins
import collections
import io
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from lama_jax import torch_pickle
from lama_jax.torch_pickle import (CheckpointFormatError, UnsafeCheckpointError, load_state_dict,
                                   load_torch_file)

FORMATS = ["zip", "legacy"]
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _save(obj, path, fmt):
    torch.save(obj, path, _use_new_zipfile_serialization=(fmt == "zip"))
    return path


def _expected(tensor):
    """tensor.numpy(), also for the dtypes numpy lacks and for lazily conjugated views."""
    tensor = tensor.detach().resolve_conj().resolve_neg()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _assert_same(actual, tensor):
    expected = _expected(tensor)
    assert isinstance(actual, np.ndarray)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


def _tensor_zoo():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=generator)
    return collections.OrderedDict(
        float32=torch.randn(3, 5, generator=generator),
        float16=torch.randn(7, generator=generator).half(),
        bfloat16=torch.randn(2, 3, generator=generator).bfloat16().t(),
        float64=torch.randn(2, 2, generator=generator).double(),
        int64=torch.arange(-5, 7).reshape(3, 4),
        int8=torch.tensor([-128, 0, 127], dtype=torch.int8),
        uint8=torch.tensor([0, 200, 255], dtype=torch.uint8),
        uint16=torch.tensor([1, 60000], dtype=torch.int32).to(torch.uint16),  # _rebuild_tensor_v3
        bool=torch.tensor([[True, False], [False, True]]),
        complex64=torch.randn(3, dtype=torch.complex64, generator=generator),
        conjugated=torch.randn(3, dtype=torch.complex64, generator=generator).conj(),
        base=base,
        transposed=base.t(),  # shares the storage of `base`, non-contiguous
        row_slice=base[1:3, 2:5],  # storage offset and row stride 6
        strided=base[::2, ::3],
        scalar=torch.tensor(2.5),
        empty=torch.zeros(0, 3),
        parameter=torch.nn.Parameter(torch.ones(2, 2)),  # _rebuild_parameter
        num_batches_tracked=torch.tensor(7),
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_state_dict_round_trip_matches_torch(tmp_path, fmt):
    tensors = _tensor_zoo()
    path = _save(tensors, tmp_path / f"zoo_{fmt}.pth", fmt)
    loaded = load_torch_file(path)
    assert isinstance(loaded, collections.OrderedDict)
    assert list(loaded) == list(tensors)
    for name, tensor in tensors.items():
        _assert_same(loaded[name], tensor)
    assert loaded["bfloat16"].dtype == ml_dtypes.bfloat16
    assert loaded["scalar"].shape == () and loaded["scalar"] == 2.5
    # Views are materialised as independent, writable, C-contiguous arrays.
    assert loaded["transposed"].flags.c_contiguous and loaded["transposed"].flags.writeable
    assert not np.shares_memory(loaded["base"], loaded["transposed"])
    assert load_state_dict(path).keys() == tensors.keys()


class HParams:
    """A user class in hyper_parameters: must come back inert, never imported."""

    def __init__(self):
        self.generator = {"kind": "ffc_resnet", "ngf": 64}
        self.lr = 1e-3


class AttributeDict(dict):
    """Like Lightning's AttributeDict: a dict subclass pickled with SETITEMS."""


def _lightning_checkpoint():
    generator = torch.Generator().manual_seed(1)
    state_dict = collections.OrderedDict(
        [("generator.model.1.ffc.convl2l.weight", torch.randn(8, 4, 3, 3, generator=generator)),
         ("generator.model.2.bn_l.running_var", torch.rand(8, generator=generator)),
         ("generator.model.2.bn_l.num_batches_tracked", torch.tensor(12)),
         ("discriminator.model0.0.weight", torch.randn(4, 3, 4, 4, generator=generator))])
    state_dict._metadata = {"": {"version": 1}}  # what nn.Module.state_dict() attaches
    hparams = AttributeDict(training_model={"kind": "default"}, optimizers=HParams())
    return {
        "epoch": 3,
        "global_step": 1200,
        "pytorch-lightning_version": "1.2.9",
        "state_dict": state_dict,
        "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0),
                                            "exp_avg": torch.randn(3, generator=generator)}},
                              "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999),
                                                "params": [0]}]}],
        "hyper_parameters": hparams,
        "extras": {"shape": torch.Size([1, 3, 256, 256]), "dtype": torch.float32,
                   "blob": b"\x00\xffraw", "tags": {"a", "b"}},
    }


@pytest.mark.parametrize("fmt", FORMATS)
def test_lightning_checkpoint(tmp_path, fmt):
    checkpoint = _lightning_checkpoint()
    path = _save(checkpoint, tmp_path / f"best_{fmt}.ckpt", fmt)
    loaded = load_torch_file(path)

    assert loaded["epoch"] == 3 and loaded["global_step"] == 1200
    assert loaded["pytorch-lightning_version"] == "1.2.9"
    for name, tensor in checkpoint["state_dict"].items():
        _assert_same(loaded["state_dict"][name], tensor)
    assert loaded["state_dict"]._metadata == {"": {"version": 1}}
    optimizer = loaded["optimizer_states"][0]
    _assert_same(optimizer["state"][0]["exp_avg"], checkpoint["optimizer_states"][0]["state"][0]
                 ["exp_avg"])
    assert optimizer["param_groups"] == [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]
    assert loaded["extras"] == {"shape": (1, 3, 256, 256),
                                "dtype": ("torch.float32", np.dtype(np.float32)),
                                "blob": b"\x00\xffraw", "tags": {"a", "b"}}

    hparams = loaded["hyper_parameters"]
    assert type(hparams).__name__ == "_InertObject"
    assert hparams.pickled_global.endswith("test_torch_pickle.AttributeDict")
    assert hparams.dict_entries["training_model"] == {"kind": "default"}
    optimizers = hparams.dict_entries["optimizers"]
    assert optimizers.pickled_global.endswith("test_torch_pickle.HParams")
    assert optimizers.state == {"generator": {"kind": "ffc_resnet", "ngf": 64}, "lr": 1e-3}
    assert "test_torch_pickle.HParams" in repr(optimizers)

    state_dict = load_state_dict(path)
    assert list(state_dict) == list(checkpoint["state_dict"])
    _assert_same(state_dict["generator.model.2.bn_l.num_batches_tracked"], torch.tensor(12))


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_state_dict_finds_plain_and_model_dicts(tmp_path, fmt):
    encoder = collections.OrderedDict(
        [("conv1.weight", torch.randn(4, 3, 3, 3)), ("bn1.running_mean", torch.zeros(4))])
    plain = _save(encoder, tmp_path / f"encoder_epoch_20_{fmt}.pth", fmt)
    wrapped = _save({"model": encoder, "epoch": 20}, tmp_path / f"wrapped_{fmt}.pth", fmt)
    for path in (plain, wrapped):
        state_dict = load_state_dict(path)
        assert list(state_dict) == list(encoder)
        for name, tensor in encoder.items():
            _assert_same(state_dict[name], tensor)


def test_load_state_dict_without_tensors_names_file(tmp_path):
    path = _save({"epoch": 3, "note": "no weights"}, tmp_path / "empty.ckpt", "zip")
    with pytest.raises(CheckpointFormatError, match=rf"{path}: no state dict.*'epoch', 'note'"):
        load_state_dict(path)


# ---- Malicious pickles --------------------------------------------------------------------------

class Payload:
    """Pickles as a call of `function(*args)`, which plain pickle runs while loading."""

    def __init__(self, function, args):
        self.function = function
        self.args = args

    def __reduce__(self):
        return self.function, self.args


MALICIOUS = {
    "os.system": (lambda marker: Payload(os.system, (f"touch {marker}",)),
                  rf"{os.system.__module__}\.system"),
    "eval": (lambda marker: Payload(builtins.eval, (f"open({str(marker)!r}, 'w').close()",)),
             r"builtins\.eval"),
    "exec": (lambda marker: Payload(builtins.exec, (f"open({str(marker)!r}, 'w').close()",)),
             r"builtins\.exec"),
    "subprocess": (lambda marker: Payload(subprocess.Popen, (["touch", str(marker)],)),
                   r"subprocess\.Popen"),
}


def write_marker(path):
    pathlib.Path(path).write_text("executed")


class CallsHelper:
    """A payload through a global that is on no refuse list: it must stay inert."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (str(self.marker),)


def _write_malicious(payload, path, container):
    checkpoint = {"state_dict": {"w": torch.ones(2)}, "hyper_parameters": payload}
    if container == "raw_pickle":  # a bare pickle, as `pickle.dump` or a hostile tool writes it
        path.write_bytes(pickle.dumps({"epoch": 1, "hyper_parameters": payload}, protocol=2))
    else:
        _save(checkpoint, path, container)


@pytest.mark.parametrize("container", ["zip", "legacy", "raw_pickle"])
@pytest.mark.parametrize("attack", sorted(MALICIOUS))
def test_malicious_pickle_refused_without_side_effects(tmp_path, container, attack):
    make_payload, global_pattern = MALICIOUS[attack]
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{container}.ckpt"
    _write_malicious(make_payload(marker), path, container)
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}: .*{global_pattern}") as raised:
        load_torch_file(path)
    assert "nothing from the file was executed" in str(raised.value)
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    assert not marker.exists()


def test_malicious_payload_is_live(tmp_path):
    """The payload used above really runs under plain pickle, so the refusal test can fail."""
    for attack, (make_payload, _) in MALICIOUS.items():
        marker = tmp_path / f"pwned_{attack}"
        process = pickle.loads(pickle.dumps(make_payload(marker), protocol=2))
        if attack == "subprocess":
            process.wait()
        assert marker.exists(), attack


@pytest.mark.parametrize("fmt", FORMATS)
def test_unlisted_callable_stays_inert(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / f"helper_{fmt}.ckpt"
    _write_malicious(CallsHelper(marker), path, fmt)
    loaded = load_torch_file(path)
    stand_in = loaded["hyper_parameters"]
    assert stand_in.pickled_global.endswith("test_torch_pickle.write_marker")
    assert stand_in.args == (str(marker),)
    assert not marker.exists()
    np.testing.assert_array_equal(loaded["state_dict"]["w"], np.ones(2, np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_module_pickle_is_inert_with_arrays(tmp_path, fmt):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    path = _save(model, tmp_path / f"model_{fmt}.pth", fmt)
    loaded = load_torch_file(path)
    assert loaded.pickled_global == "torch.nn.modules.container.Sequential"
    conv = loaded.state["_modules"]["0"]
    assert conv.pickled_global == "torch.nn.modules.conv.Conv2d"
    _assert_same(conv.state["_parameters"]["weight"], model[0].weight)
    _assert_same(loaded.state["_modules"]["1"].state["_buffers"]["running_var"],
                 model[1].running_var)


def _zip_checkpoint(path, data_pkl, records=(), prefix="archive"):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl)
        for name, data in records:
            archive.writestr(f"{prefix}/{name}", data)
    return path


def test_unknown_module_is_never_imported(tmp_path):
    module = "lama_jax_test_module_that_must_not_be_imported"
    # NEWOBJ of module.Thing, then BUILD with {"a": 1}.
    data_pkl = (b"\x80\x02c" + module.encode() + b"\nThing\nq\x00)\x81q\x01}q\x02"
                b"X\x01\x00\x00\x00aK\x01sb.")
    path = _zip_checkpoint(tmp_path / "unknown.ckpt", data_pkl)
    loaded = load_torch_file(path)
    assert loaded.pickled_global == f"{module}.Thing" and loaded.state == {"a": 1}
    assert module not in sys.modules


@pytest.mark.parametrize("target", ["torch\nbfloat16", "torch\nBFloat16Storage"])
def test_build_cannot_alter_dtypes(tmp_path, target):
    # BUILD with a numpy dtype state would give the shared bfloat16 dtype an item size of 8.
    state = pickle.dumps((3, ">", None, None, None, 8, 8, 0), protocol=2)[2:-1]
    data_pkl = b"\x80\x02c" + target.encode() + b"\n" + state + b"b."
    path = _zip_checkpoint(tmp_path / "build.ckpt", data_pkl)
    with pytest.raises(CheckpointFormatError, match=rf"{path}: truncated or corrupt"):
        load_torch_file(path)
    assert np.dtype(ml_dtypes.bfloat16).itemsize == 2


# ---- Hand-built files: views, byte order ---------------------------------------------------------

class _StorageRef:
    def __init__(self, storage_type, key, numel):
        self.pid = ("storage", storage_type, key, "cpu", numel)


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _PersistentPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _StorageRef) else None


def _crafted_pickle(obj):
    buffer = io.BytesIO()
    _PersistentPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def test_view_outside_storage_is_refused(tmp_path):
    storage = _StorageRef(torch.FloatStorage, "0", 4)
    data_pkl = _crafted_pickle({"w": _TensorRef(storage, 1, (2, 2), (2, 1))})  # needs 5 elements
    path = _zip_checkpoint(tmp_path / "oob.ckpt", data_pkl,
                           [("data/0", np.arange(4, dtype="<f4").tobytes())])
    with pytest.raises(CheckpointFormatError, match=rf"{path}: tensor view .* reaches element 4 "
                                                    "of a 4-element storage"):
        load_torch_file(path)


def test_big_endian_zip(tmp_path):
    values = np.arange(6, dtype=np.float32) * 1.5
    storage = _StorageRef(torch.FloatStorage, "0", 6)
    data_pkl = _crafted_pickle({"w": _TensorRef(storage, 0, (2, 3), (1, 2))})
    path = _zip_checkpoint(tmp_path / "big.ckpt", data_pkl,
                           [("byteorder", "big"), ("data/0", values.astype(">f4").tobytes())])
    loaded = load_torch_file(path)["w"]
    np.testing.assert_array_equal(loaded, values.reshape(3, 2).T)
    assert loaded.dtype == np.float32 and loaded.dtype.isnative


# ---- Damaged files -------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("keep_fraction", [0.0, 0.05, 0.5, 0.99])
def test_truncated_file(tmp_path, fmt, keep_fraction):
    full = _save(_lightning_checkpoint(), tmp_path / f"full_{fmt}.ckpt", fmt).read_bytes()
    path = tmp_path / f"truncated_{fmt}.ckpt"
    path.write_bytes(full[:int(len(full) * keep_fraction)])
    message = "file is empty" if keep_fraction == 0 else "truncated|corrupt|not a PyTorch"
    with pytest.raises(CheckpointFormatError, match=rf"{path}: .*({message})"):
        load_torch_file(path)


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "not a PyTorch checkpoint"),
    (b"model weights, honestly\n", "not a PyTorch checkpoint"),
    (pickle.dumps({"w": [1.0, 2.0]}, protocol=2), "not a PyTorch checkpoint"),
])
def test_not_a_checkpoint(tmp_path, content, message):
    path = tmp_path / "not_a.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match=rf"{path}: {message}"):
        load_torch_file(path)


def test_zip_without_pickle_or_storage(tmp_path):
    no_pickle = tmp_path / "no_pickle.zip"
    with zipfile.ZipFile(no_pickle, "w") as archive:
        archive.writestr("archive/readme.txt", "hello")
    with pytest.raises(CheckpointFormatError, match=rf"{no_pickle}: zip archive without"):
        load_torch_file(no_pickle)

    storage = _StorageRef(torch.FloatStorage, "0", 4)
    data_pkl = _crafted_pickle({"w": _TensorRef(storage, 0, (4,), (1,))})
    missing = _zip_checkpoint(tmp_path / "missing.ckpt", data_pkl)
    with pytest.raises(CheckpointFormatError, match=rf"{missing}: storage record archive/data/0 "
                                                    "is missing"):
        load_torch_file(missing)
    short = _zip_checkpoint(tmp_path / "short.ckpt", data_pkl, [("data/0", bytes(12))])
    with pytest.raises(CheckpointFormatError, match=rf"{short}: storage '0' holds 12 bytes, "
                                                    "expected 4 x float32 = 16 bytes"):
        load_torch_file(short)


def test_corrupt_zip_record(tmp_path):
    path = _save({"w": torch.arange(64.0)}, tmp_path / "crc.ckpt", "zip")
    data = bytearray(path.read_bytes())
    offset = data.index(np.arange(64, dtype="<f4").tobytes())
    data[offset + 8] ^= 0xFF  # flips bits inside the stored tensor bytes: CRC mismatch
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointFormatError, match=rf"{path}: truncated or corrupt.*CRC"):
        load_torch_file(path)


# ---- Without torch -------------------------------------------------------------------------------

def test_loads_with_torch_unavailable(tmp_path):
    tensors = _tensor_zoo()
    expected = {name: _expected(tensor) for name, tensor in tensors.items()}
    for fmt in FORMATS:
        _save({"state_dict": tensors, "hyper_parameters": HParams()},
              tmp_path / f"{fmt}.ckpt", fmt)
    np.savez(tmp_path / "expected.npz",
             **{name: array.view(np.uint16) if array.dtype == ml_dtypes.bfloat16 else array
                for name, array in expected.items()})
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import ml_dtypes, numpy as np
        from lama_jax.torch_pickle import load_state_dict
        expected = np.load({str(tmp_path / "expected.npz")!r})
        for fmt in {FORMATS!r}:
            state_dict = load_state_dict({str(tmp_path)!r} + f"/{{fmt}}.ckpt")
            assert sorted(state_dict) == sorted(expected.files), fmt
            for name, array in state_dict.items():
                if array.dtype == ml_dtypes.bfloat16:
                    array = array.view(np.uint16)
                np.testing.assert_array_equal(array, expected[name])
                assert array.dtype == expected[name].dtype, name
        try:
            import torch
        except ImportError:
            print("loaded without torch")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "loaded without torch"


def test_public_api():
    assert sorted(torch_pickle.__all__) == ["CheckpointFormatError", "UnsafeCheckpointError",
                                            "load_state_dict", "load_torch_file"]
