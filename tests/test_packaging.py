"""The package outside a checkout: a built wheel, installed into a fresh venv, trains from any directory.

The wheel is built and installed offline (`--no-build-isolation`, `--no-index`, `--no-deps`), the
way an image with its own jax installs us. The fresh venv sees this venv's dependencies through a
`.pth` line but not its editable lama_jax, so every lama_jax file the run touches, configs and
sample photos included, comes from the wheel.
"""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import zipfile

import pytest

from lama_jax import config_loader

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(args, **kwargs):
    result = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, args))}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")
    # Build from a copy of what the build reads, so it leaves no build/ or egg-info in the checkout.
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, build / name)
    shutil.copytree(REPO / "lama_jax", build / "lama_jax", ignore=shutil.ignore_patterns("__pycache__"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(out), str(build)])
    (path,) = out.glob("lama_jax-*.whl")
    return path


def test_wheel_ships_the_configs_and_sample_photos(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in ("common", "big_lama", "lama_fourier", "tiny"):
        assert f"lama_jax/configs/{config}.py" in names
    assert "lama_jax/data/sample_photos/astronaut.jpg" in names
    assert "lama_jax/data/sample_photos/LICENSE.md" in names
    assert "lama_jax/demo_static/index.html" in names
    assert not any(name.startswith(("tests/", "configs/", "data/", "benchmarks/")) for name in names)


@pytest.fixture(scope="module")
def installed_venv(wheel, tmp_path_factory):
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)])
    target = pathlib.Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (target / "parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_installed_wheel_trains_one_step_from_another_directory(installed_venv, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    located = json.loads(run([str(installed_venv), "-c",
                              "import json, lama_jax, lama_jax.configs as c, jax; "
                              "print(json.dumps([lama_jax.__file__, c.__path__[0], jax.__version__]))"],
                             cwd=elsewhere, env=env).stdout)
    package_file, configs_dir, jax_version = located
    venv_root = installed_venv.parent.parent
    assert pathlib.Path(package_file).is_relative_to(venv_root), package_file
    import jax  # the installed wheel runs on this environment's jax, untouched
    assert jax_version == jax.__version__

    workdir = elsewhere / "run"
    run([str(installed_venv), "-m", "lama_jax.train", "--config", str(pathlib.Path(configs_dir) / "tiny.py"),
         "--workdir", str(workdir), "--config.total_steps=1", "--config.batch_size=2",
         "--config.data.crop_size=32", "--config.data.eval_size=64", "--config.eval.batch_size=2",
         "--config.eval.num_image_grids=1"], cwd=elsewhere, env=env)
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert any(r.get("step") == 1 and "gen_total" in r for r in records), records
    assert any("val_ssim" in r for r in records), records
    assert (workdir / "checkpoints" / "1").is_dir()
    assert not (elsewhere / "build").exists()


def test_config_names_resolve_to_the_packaged_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert config_loader.packaged_names() == ["big_lama", "lama_fourier", "tiny"]
    assert config_loader.resolve_spec("tiny") == str(config_loader.PACKAGED_DIR / "tiny.py")
    assert config_loader.resolve_spec("big_lama.py:x") == str(config_loader.PACKAGED_DIR / "big_lama.py") + ":x"
    assert config_loader.load_config("tiny").model.generator.ngf == 8
    own = tmp_path / "tiny.py"  # an existing file wins over the packaged name
    own.write_text("from lama_jax.configs.common import lama_config\n\ndef get_config():\n"
                   "    c = lama_config()\n    c.seed = 7\n    return c\n")
    assert config_loader.load_config("tiny.py").seed == 7
    with pytest.raises(FileNotFoundError, match=r"'configs/tinyy.py' is neither a file nor a packaged config "
                                                r"\(packaged: big_lama, lama_fourier, tiny"):
        config_loader.load_config("configs/tinyy.py")
