"""A small stand-in for an upstream advimman/lama checkout, for the benchmarks' PyTorch plumbing tests.

`write_stand_in(root)` writes, under `root`, every module and name benchmarks/upstream_lama.py imports
from upstream and nothing of LaMa: networks with the parameter names and shapes lama_jax's converter
expects (of GENERATOR and DISCRIMINATOR, or of given configs), simple losses, and a loader over JPEGs. Its generator records
the keyword arguments it was built with in saicinpainting/training/modules/generator_kwargs.json.
"""

import json
import pathlib
import textwrap

import jax

from lama_jax import convert
from lama_jax.models import build_discriminator, build_generator

GENERATOR = dict(ngf=8, n_downsampling=2, n_blocks=1, ratio=0.75, enable_lfu=False)
DISCRIMINATOR = dict(ndf=8, n_layers=1)

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


def write_stand_in(root, generator=None, discriminator=None) -> pathlib.Path:
    """The stand-in under `root`, its networks shaped as lama_jax's of the `generator` and
    `discriminator` configs (default GENERATOR, DISCRIMINATOR)."""
    generator, discriminator = dict(generator or GENERATOR), dict(discriminator or DISCRIMINATOR)
    root = pathlib.Path(root)
    for name, text in STAND_IN.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    shapes = {
        "generator": torch_shapes(build_generator(generator),
                                  convert.generator_key_fn(generator["n_downsampling"], generator["n_blocks"]), 4,
                                  "blocks"),
        "discriminator": torch_shapes(build_discriminator(discriminator), convert.discriminator_key, 3),
    }
    (root / "saicinpainting/training/modules/shapes.json").write_text(json.dumps(shapes))
    return root


def generator_kwargs(root) -> dict:
    """The keyword arguments the stand-in's generator was last built with."""
    return json.loads((pathlib.Path(root) / "saicinpainting/training/modules/generator_kwargs.json").read_text())
