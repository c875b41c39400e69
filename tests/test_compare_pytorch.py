"""benchmarks/compare_pytorch.py's plumbing against a small stand-in for an upstream LaMa checkout.

The stand-in (written to tmp_path) has the module and function names the
benchmark imports from upstream and nothing of LaMa: networks with the
parameter names and shapes lama_jax's converter expects, simple losses, and a
loader over the JPEGs. Timings are produced but never asserted.
"""

import importlib.util
import json
import math
import pathlib
import shutil
import sys
import textwrap

import jax
import numpy as np
import pytest

pytest.importorskip("torch")

from lama_jax import convert  # noqa: E402
from lama_jax.models import build_discriminator, build_generator  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATOR = dict(ngf=8, n_downsampling=2, n_blocks=1, ratio=0.75, enable_lfu=False)
DISCRIMINATOR = dict(ndf=8, n_layers=1)


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

# The stand-in: every name benchmarks/upstream_lama.py imports, each as small as the benchmark allows.
STAND_IN = {
    "saicinpainting/__init__.py": "",
    "saicinpainting/training/__init__.py": "",
    "saicinpainting/training/losses/__init__.py": "",
    "saicinpainting/training/trainers/__init__.py": "",
    "saicinpainting/training/data/__init__.py": "",
    "models/__init__.py": "",
    "models/ade20k/__init__.py": "",
    "models/ade20k/base.py": "class ResnetDilated:\n    pass\n",
    "models/ade20k/resnet.py": "def resnet50(pretrained=False):\n    raise NotImplementedError\n",
    "saicinpainting/training/losses/perceptual.py": "class ResNetPL:\n    pass\n",
    "saicinpainting/training/modules/__init__.py": """
        import json, pathlib
        import torch
        SHAPES = json.loads((pathlib.Path(__file__).parent / "shapes.json").read_text())

        class Generator(torch.nn.Module):
            def __init__(self, **kwargs):
                super().__init__()
                (pathlib.Path(__file__).parent / "generator_kwargs.json").write_text(json.dumps(kwargs))
                self.weights = torch.nn.ParameterDict(
                    {k.replace(".", ":"): torch.nn.Parameter(0.1 * torch.rand(s)) for k, s in SHAPES["generator"].items()})

            def state_dict(self, *args, **kwargs):
                return {k.replace(":", "."): v for k, v in self.weights.items()}

            def forward(self, x):
                shift = sum(p.mean() for p in self.weights.values())
                return torch.sigmoid(x[:, :3] + shift)

        class Discriminator(torch.nn.Module):
            def __init__(self, input_nc, ndf, n_layers):
                super().__init__()
                self.n_layers = n_layers
                for k in range(n_layers + 2):
                    out, inp = SHAPES["discriminator"][f"model{k}.0.weight"][:2]
                    layers = [torch.nn.Conv2d(inp, out, 4, stride=2 if k < n_layers else 1, padding=2)]
                    if f"model{k}.1.weight" in SHAPES["discriminator"]:
                        layers.append(torch.nn.BatchNorm2d(out))
                    self.add_module(f"model{k}", torch.nn.Sequential(*layers))

            def forward(self, x):
                features = []
                for k in range(self.n_layers + 2):
                    x = getattr(self, f"model{k}")(x)
                    if k < self.n_layers + 1:
                        x = torch.nn.functional.leaky_relu(x, 0.2)
                        features.append(x)
                return x, features

        def make_generator(config, kind, **kwargs):
            return Generator(**kwargs)

        def make_discriminator(kind, **kwargs):
            return Discriminator(**kwargs)
    """,
    "saicinpainting/training/losses/adversarial.py": """
        import torch.nn.functional as F

        class Loss:
            def __init__(self, weight, **kwargs):
                self.weight = weight
            def pre_generator_step(self, **kwargs):
                pass
            pre_discriminator_step = pre_generator_step
            def generator_loss(self, discr_fake_pred, **kwargs):
                return F.softplus(-discr_fake_pred).mean() * self.weight, {}
            def discriminator_loss(self, discr_real_pred, discr_fake_pred, **kwargs):
                loss = F.softplus(-discr_real_pred).mean() + F.softplus(discr_fake_pred).mean()
                return loss, {"discr_real_out": discr_real_pred.mean(), "discr_fake_out": discr_fake_pred.mean()}

        def make_discrim_loss(kind, **kwargs):
            return Loss(**kwargs)
    """,
    "saicinpainting/training/trainers/base.py": """
        class BaseInpaintingTrainingModule:
            def _do_step(self, batch, batch_idx, mode="train", optimizer_idx=None):
                batch = self(batch)
                loss, metrics = (self.generator_loss if optimizer_idx == 0 else self.discriminator_loss)(batch)
                return dict(loss=loss, log_info={f"{mode}_{k}": v for k, v in metrics.items()})
    """,
    "saicinpainting/training/trainers/default.py": """
        import json, types
        import torch
        from saicinpainting.training.trainers.base import BaseInpaintingTrainingModule

        class OmegaConf:  # upstream's trainer module has omegaconf's; attribute access is all this needs
            @staticmethod
            def create(tree):
                return json.loads(json.dumps(tree), object_hook=lambda d: types.SimpleNamespace(**d))

        class DefaultInpaintingTrainingModule(BaseInpaintingTrainingModule):
            def forward(self, batch):
                image, mask = batch["image"], batch["mask"]
                batch["predicted_image"] = self.generator(torch.cat([image * (1 - mask), mask], dim=1))
                return batch

            def generator_loss(self, batch):
                l1 = (batch["predicted_image"] - batch["image"]).abs().mean() * self.config.losses.l1.weight_known
                logits, _ = self.discriminator(batch["predicted_image"])
                adv, _ = self.adversarial_loss.generator_loss(discr_fake_pred=logits)
                return l1 + adv, {"gen_l1": l1, "gen_adv": adv}

            def discriminator_loss(self, batch):
                real, _ = self.discriminator(batch["image"])
                fake, _ = self.discriminator(batch["predicted_image"].detach())
                loss, metrics = self.adversarial_loss.discriminator_loss(discr_real_pred=real, discr_fake_pred=fake)
                return loss, dict(metrics, discr_adv=loss)
    """,
    "saicinpainting/training/data/datasets.py": """
        import glob, os
        import cv2, numpy as np, torch

        class Crops(torch.utils.data.Dataset):
            def __init__(self, indir, out_size):
                self.files, self.out_size = sorted(glob.glob(os.path.join(indir, "**", "*.jpg"), recursive=True)), out_size
            def __len__(self):
                return len(self.files)
            def __getitem__(self, i):
                image = cv2.imread(self.files[i])[: self.out_size, : self.out_size].astype(np.float32) / 255
                return {"image": image.transpose(2, 0, 1), "mask": np.zeros((1, self.out_size, self.out_size), np.float32)}

        def make_default_train_dataloader(indir, kind="default", out_size=512, mask_gen_kwargs=None,
                                          transform_variant="default", dataloader_kwargs=None):
            return torch.utils.data.DataLoader(Crops(indir, out_size), **dataloader_kwargs)
    """,
}


def torch_shapes(module, key_fn, input_channels, stacked_prefix=None):
    """{torch key: torch shape} of the lama_jax module, as the converter maps it."""
    shapes = {}
    abstract = convert.abstract_variables(module, (1, 32, 32, input_channels))
    for path, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        names = [p.key for p in path]
        module_path, name = tuple(names[1:-1]), names[-1]
        transposed = module_path[0].startswith("up_") and not module_path[0].startswith("up_bn")
        stacked = stacked_prefix is not None and module_path[0] == stacked_prefix
        torch_leaf = convert._LEAF_TO_TORCH.get(name, name)
        for block in range(leaf.shape[0]) if stacked else [None]:
            shape = leaf.shape[1:] if stacked else leaf.shape
            shapes[f"{key_fn(module_path, block)}.{torch_leaf}"] = convert._expected_torch_shape(shape, name, transposed)
    return shapes


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    root = tmp_path_factory.mktemp("lama-root")
    for name, text in STAND_IN.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    shapes = {
        "generator": torch_shapes(build_generator(GENERATOR), convert.generator_key_fn(2, 1), 4, "blocks"),
        "discriminator": torch_shapes(build_discriminator(DISCRIMINATOR), convert.discriminator_key, 3),
    }
    (root / "saicinpainting/training/modules/shapes.json").write_text(json.dumps(shapes))
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
    kwargs = json.loads((root / "saicinpainting/training/modules/generator_kwargs.json").read_text())
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
