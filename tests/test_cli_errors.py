"""Every command line answers common mistakes with one `error: ...` line on stderr and a non-zero exit.

The CLIs are called in-process (`main(argv)`, or train's flag parser), which is
what `python -m` runs. Subprocesses check what only a process shows: train's
output without a traceback, train's `--help` (absl prints `__main__`'s
docstring), and that `predict --help` loads no heavy module.
"""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image

from lama_jax import convert, demo, evaluate, export, predict, train
from lama_jax.data import build_tfds, gen_masks

REPO = pathlib.Path(__file__).resolve().parents[1]


def one_error_line(capsys, main, argv):
    """Runs `main(argv)`; asserts a non-zero status and that stderr is one `error: ` line; returns that line."""
    try:
        status = main(argv)
    except SystemExit as exit_request:  # argparse's usage errors and train's flag parser exit
        status = exit_request.code
    err = capsys.readouterr().err
    assert status not in (0, None), err
    assert err.startswith("error: ") and err.count("\n") == 1 and err.endswith("\n"), err
    return err.strip()


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------------------------------------
# train


@pytest.fixture()
def train_flags(monkeypatch):
    """train's flag parser on the process-wide absl FLAGS, reset afterwards for the other tests."""

    def forget_overrides():
        # ml_collections defines a `config.<key>` flag per override it parses; a second parse in one process
        # would define it again.
        for name in [name for name in flags.FLAGS if name.startswith("config.")]:
            delattr(flags.FLAGS, name)

    def parse(args):
        forget_overrides()
        argv = ["train", *args]
        monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads --config.key overrides from sys.argv
        return train.parse_flags(argv)

    yield parse
    forget_overrides()
    flags.FLAGS.unparse_flags()
    flags.FLAGS.mark_as_parsed()  # as conftest leaves it


@pytest.mark.parametrize("args, message", [
    ([], "error: --config and --workdir are required (see python -m lama_jax.train --help)"),
    (["--config", "tiny"], "error: --workdir is required"),
    (["--config", "tinyy", "--workdir", "w"], "error: --config: config 'tinyy' is neither a file nor a packaged "
                                             "config (packaged: big_lama, lama_fourier, tiny"),
    (["--config", "tiny", "--workdir", "w", "--config.data.crop_sise=32"],
     "error: --config.data.crop_sise: tiny has no key 'data.crop_sise' (keys of config.data: crop_size,"),
    (["--config", "tiny", "--workdir", "w", "--config.total_steps=abc"],
     "error: flag --config.total_steps=abc: invalid literal for int()"),
    (["--config", "tiny", "--workdir", "w", "--totl_steps=3"], "error: Unknown command line flag 'totl_steps'"),
])
def test_train_flag_mistakes(train_flags, capsys, args, message):
    assert one_error_line(capsys, train_flags, args).startswith(message)


def test_train_workdir_that_is_a_file_and_config_mistakes(train_flags, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    argv = train_flags(["--config", "tiny", "--workdir", str(a_file)])
    assert one_error_line(capsys, train.main, argv) == (
        f"error: --workdir {a_file} is a file, not a folder; name a new or existing run folder")
    argv = train_flags(["--config", "tiny", "--workdir", str(tmp_path / "run"), "--config.eval.best_mode=maximum",
                       "--config.batch_size=8", "--config.eval.batch_size=8"])  # conftest's 8 devices
    assert one_error_line(capsys, train.main, argv) == "error: config.eval.best_mode must be 'max' or 'min', got 'maximum'"
    assert not (tmp_path / "run").exists()
    argv = train_flags(["--config", "tiny", "--workdir", str(tmp_path / "run")])
    assert one_error_line(capsys, train.main, [*argv, "extra"]).startswith("error: unexpected arguments: extra")
    argv = train_flags(["--config", "tiny", "--workdir", str(tmp_path / "run"), "--config.data.source=tfds",
                        "--config.data.tfds_name=my_photos", f"--config.data.tfds_data_dir={tmp_path}",
                        "--config.batch_size=8", "--config.eval.batch_size=8"])
    err = one_error_line(capsys, train.main, argv)
    assert err.startswith(f"error: TFDS data set 'my_photos' split 'train' is not prepared in {tmp_path} (")
    assert "python -m lama_jax.data.build_tfds --input DIR --name my_photos" in err


def test_train_process_prints_one_line_and_no_traceback(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "lama_jax.train", "--config", "tinyy", "--workdir", str(tmp_path)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: --config: config 'tinyy'") and result.stderr.count("\n") == 1, result.stderr


def test_train_help_is_for_users():
    result = subprocess.run([sys.executable, "-m", "lama_jax.train", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0
    assert result.stdout.startswith("Trains LaMa, or resumes the run in --workdir.\n")
    assert "--workdir: Run directory" in result.stdout and "--[no]verbose" in result.stdout
    assert "Workdir layout" not in result.stdout and "train_and_evaluate" not in result.stdout  # developer notes


# ---------------------------------------------------------------------------------------------
# convert, export


def test_convert_mistakes(tmp_path, capsys):
    assert one_error_line(capsys, convert.main, ["--output", "o"]) == (
        "error: the following arguments are required: --torch-checkpoint (see python -m lama_jax.convert --help)")
    missing = tmp_path / "best.ckpt"
    assert str(missing) in one_error_line(capsys, convert.main, ["--torch-checkpoint", str(missing), "--output", "o"])
    err = one_error_line(capsys, convert.main, ["--config", "big_lamma", "--torch-checkpoint", "x", "--output", "o"])
    assert err.startswith("error: config 'big_lamma' is neither a file nor a packaged config")


def test_export_mistakes(tmp_path, capsys):
    assert one_error_line(capsys, export.main, ["--workdir", "w"]).startswith(
        "error: the following arguments are required: --output")
    err = one_error_line(capsys, export.main, ["--workdir", str(tmp_path / "run"), "--output", "o"])
    assert "does not exist: is" in err and "a lama_jax.train workdir?" in err
    assert "argument --step: invalid int value: 'last'" in one_error_line(
        capsys, export.main, ["--workdir", "w", "--output", "o", "--step", "last"])


# ---------------------------------------------------------------------------------------------
# predict, evaluate, demo


@pytest.fixture()
def photos(tmp_path):
    """Two photos with masks: cat.jpg + cat_mask.png, dog.png + dog_mask.png (32x32)."""
    folder = tmp_path / "photos"
    for name, ext in (("cat", "jpg"), ("dog", "png")):
        _save(str(folder / f"{name}.{ext}"), np.full((32, 32, 3), 100, np.uint8))
        _save(str(folder / f"{name}_mask.png"), np.zeros((32, 32), np.uint8))
    return folder


def test_predict_mistakes(photos, tmp_path, capsys):
    ckpt = ["--checkpoint", str(tmp_path / "big_lama")]
    assert one_error_line(capsys, predict.main, [*ckpt, "--image", str(photos / "cat.jpg"), "--output", "o"]) == (
        "error: --image needs --mask (see python -m lama_jax.predict --help)")
    assert one_error_line(capsys, predict.main, [*ckpt, "--image", "kitten.jpg", "--mask", str(photos / "cat_mask.png"),
                                                 "--output", "o"]) == "error: --image 'kitten.jpg' does not exist"
    err = one_error_line(capsys, predict.main, [*ckpt, "--input", str(photos), "--output", "result.png"])
    assert err == "error: --output 'result.png' is one image file, but there are 2 samples; give a folder"
    err = one_error_line(capsys, predict.main, [*ckpt, "--input", str(photos), "--output", str(photos)])
    assert err.startswith("error: the result for") and "would overwrite the input" in err
    err = one_error_line(capsys, predict.main, [*ckpt, "--input", str(photos), "--output", str(tmp_path / "out")])
    assert err.startswith(f"error: {tmp_path / 'big_lama'}: does not exist. Make a model checkpoint with")
    assert "invalid int value: 'eight'" in one_error_line(
        capsys, predict.main, [*ckpt, "--input", str(photos), "--output", "o", "--batch-size", "eight"])


def test_predict_help_is_fast_and_loads_no_jax():
    code = ("import sys, contextlib, io\n"
            "from lama_jax import predict\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    assert predict.main(['--help']) == 0\n"
            "assert '--checkpoint' in out.getvalue()\n"
            "print(sorted(m for m in ('jax', 'cv2', 'lama_jax.evaluate', 'lama_jax.inference') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_evaluate_mistakes(photos, tmp_path, capsys):
    args = ["--data", str(photos), "--predictions", str(photos), "--output", str(tmp_path / "r.json")]
    err = one_error_line(capsys, evaluate.main, [*args, "--metrics", "ssim,lpips"])
    assert "vgg.pth" in err and "--lpips-weights" in err
    assert one_error_line(capsys, evaluate.main, [*args, "--metrics", "ssim,is"]).startswith(
        "error: unknown metrics ['is']")
    err = one_error_line(capsys, evaluate.main, [*args[:1], str(tmp_path / "nowhere"), *args[2:], "--metrics", "ssim"])
    assert err == f"error: --data {str(tmp_path / 'nowhere')!r} is not a directory"


def test_demo_mistakes(tmp_path, capsys):
    assert one_error_line(capsys, demo.main, ["--checkpoint", str(tmp_path / "big_lama")]).startswith(
        f"error: {tmp_path / 'big_lama'}: does not exist")
    assert one_error_line(capsys, demo.main, ["--max-megapixels", "0"]) == (
        "error: --max-megapixels must be positive, got 0.0 (see python -m lama_jax.demo --help)")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = one_error_line(capsys, demo.main, ["--port", str(port)])
    assert err.startswith(f"error: cannot serve on 127.0.0.1:{port} (") and "choose another --port" in err


# ---------------------------------------------------------------------------------------------
# data tools


def test_gen_masks_mistakes(tmp_path, capsys):
    assert one_error_line(capsys, gen_masks.main, ["--input", str(tmp_path / "photos"), "--output", "o"]) == (
        f"error: image folder {tmp_path / 'photos'} does not exist or is not a folder")
    assert one_error_line(capsys, gen_masks.main, ["--input", "i", "--output", "o", "--preset", "thick"]).startswith(
        "error: argument --preset: invalid choice: 'thick'")


def test_build_tfds_mistakes(tmp_path, capsys):
    args = ["--data-dir", str(tmp_path / "tfds")]
    assert one_error_line(capsys, build_tfds.main, [*args, "--input", str(tmp_path / "none"), "--name", "x"]) == (
        f"error: image folder {tmp_path / 'none'} does not exist or is not a folder")
    (tmp_path / "empty").mkdir()
    assert one_error_line(capsys, build_tfds.main, [*args, "--input", str(tmp_path / "empty"), "--name", "x"]).startswith(
        f"error: no images (jpg/jpeg/png/webp/bmp) found under {tmp_path / 'empty'}")
    _save(str(tmp_path / "photos" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert one_error_line(capsys, build_tfds.main, [*args, "--input", str(tmp_path / "photos"), "--name", "My-Set"]) == (
        "error: data set name 'My-Set' must be lower snake_case (letters, digits, _)")
