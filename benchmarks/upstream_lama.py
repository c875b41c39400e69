"""Upstream PyTorch LaMa (advimman/lama), imported from a checkout the user gives, for side-by-side runs.

Nothing of LaMa is copied here: `import_upstream(lama_root)` puts the checkout on
`sys.path` and imports its `saicinpainting` package. The functions build
upstream's own networks and losses with the settings of a lama_jax config
(`UpstreamConfig.from_lama_jax`; default the packaged big_lama, which holds
upstream's `configs/training/big-lama.yaml` values):

* `torch_generator`: the `FFCResNetGenerator`, seeded init, float32;
* `generator_variables_from_torch`: its weights as lama_jax variables (lama_jax.convert);
* `torch_training`: its `step(batch)` is one G step then one D step with upstream's
  `DefaultInpaintingTrainingModule` methods. LaMa's trainer targets
  PyTorch-Lightning 1.2.9, whose loop current Lightning does not reproduce, so
  what that loop did is done here: per optimizer (G, then D), with the other
  network's parameters not requiring gradients (Lightning's optimizer
  toggling), `_do_step`, backward, `clip_grad_norm_(params, 1)` (Lightning's `gradient_clip_val: 1`,
  `min(1, 1 / (norm + 1e-6))`), `step()`, `zero_grad()`.

Run as a script it is the PyTorch side that the benchmarks drive from another
interpreter (the one with LaMa's requirements): `--serve --lama-root DIR` for
`compare_pytorch.py` (one JSON request per stdin line, one JSON reply per stdout
line), `--device-benchmark REQUEST` for `accelerator.py` (one JSON result). It
never imports JAX.
torch is imported inside functions so that this module imports without it.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import socket
import sys
import tempfile
import time
import types
from typing import Any, Callable, Dict, Optional

# The packages LaMa imports at module level, as they install for this purpose (LaMa's requirements.txt
# lists them; albumentations 0.5.2 + imgaug is the API its `distortions` transform was written against).
INSTALL_HINT = ('python -m pip install torch "numpy<2" scipy pandas kornia pyyaml easydict omegaconf '
                'scikit-image scikit-learn tqdm matplotlib six webdataset pytorch_lightning '
                '"albumentations==0.5.2" imgaug opencv-python-headless')


class UpstreamUnavailable(RuntimeError):
    """torch or a module upstream LaMa imports is missing, or the checkout is not one."""


@dataclasses.dataclass(frozen=True)
class UpstreamConfig:
    """The settings of an upstream training config the benchmarks use, taken from a lama_jax config."""

    ngf: int
    n_downsampling: int
    n_blocks: int
    ratio: float
    enable_lfu: bool
    ndf: int
    n_layers: int
    l1_weight_known: float
    l1_weight_missing: float
    adversarial_weight: float
    r1_weight: float
    mask_as_fake_target: bool
    allow_scale_mask: bool
    feature_matching_weight: float
    resnet_pl_weight: float
    generator_lr: float
    discriminator_lr: float
    clip_norm: float

    @classmethod
    def from_lama_jax(cls, config=None) -> "UpstreamConfig":
        """The upstream settings holding the same networks, losses and optimisers as a lama_jax config
        (default: the packaged big_lama, whose values are big-lama.yaml's)."""
        if config is None:
            from lama_jax import config_loader  # ml_collections only; no JAX

            config = config_loader.load_config("big_lama")
        g, d, w, o = config.model.generator, config.model.discriminator, config.losses, config.optim
        return cls(ngf=g.ngf, n_downsampling=g.n_downsampling, n_blocks=g.n_blocks, ratio=g.ratio,
                   enable_lfu=g.enable_lfu, ndf=d.ndf, n_layers=d.n_layers, l1_weight_known=w.l1_weight_known,
                   l1_weight_missing=w.l1_weight_missing, adversarial_weight=w.adversarial_weight,
                   r1_weight=w.r1_weight, mask_as_fake_target=w.mask_as_fake_target,
                   allow_scale_mask=w.allow_scale_mask, feature_matching_weight=w.feature_matching_weight,
                   resnet_pl_weight=w.resnet_pl_weight, generator_lr=o.generator_lr,
                   discriminator_lr=o.discriminator_lr, clip_norm=o.clip_norm)

    def generator_kwargs(self) -> Dict[str, Any]:
        """Upstream `FFCResNetGenerator` keyword arguments (big-lama.yaml's `generator:` section)."""
        local = dict(ratio_gin=0, ratio_gout=0, enable_lfu=False)
        return dict(input_nc=4, output_nc=3, ngf=self.ngf, n_downsampling=self.n_downsampling,
                    n_blocks=self.n_blocks, add_out_act="sigmoid", init_conv_kwargs=local,
                    downsample_conv_kwargs=local,
                    resnet_conv_kwargs=dict(ratio_gin=self.ratio, ratio_gout=self.ratio,
                                            enable_lfu=self.enable_lfu))



def _missing(name: str, lama_root) -> UpstreamUnavailable:
    if name in ("saicinpainting", "models"):
        return UpstreamUnavailable(
            f"cannot import '{name}' from --lama-root {lama_root}: it is not an advimman/lama checkout "
            f"(expected {pathlib.Path(lama_root) / name}/)")
    return UpstreamUnavailable(
        f"upstream LaMa needs the module '{name}', which {sys.executable} cannot import; install LaMa's "
        f"requirements into that interpreter: {INSTALL_HINT}")


def _stub_torchvision() -> None:
    """An inert `torchvision` when none is importable: LaMa imports it at module level but uses it only
    for losses and metrics these benchmarks never build (VGG perceptual loss, LPIPS, FID)."""
    import importlib.machinery
    import importlib.util

    import torch

    if importlib.util.find_spec("torchvision") is not None:
        return

    def unavailable(*args, **kwargs):
        raise UpstreamUnavailable("this part of upstream LaMa needs torchvision, which is not installed")

    class Placeholder(type(torch.nn.Module)):
        """Any attribute (models.inception.InceptionA, ...) is again a subclassable placeholder."""

        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable

    Unavailable = Placeholder("Unavailable", (torch.nn.Module,), {"__init__": unavailable})

    class Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Unavailable

    for name in ("torchvision", "torchvision.models", "torchvision.transforms"):
        sys.modules[name] = Stub(name)
        # A spec of its own: libraries probe importlib.util.find_spec("torchvision"), which reads it.
        sys.modules[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]


def import_upstream(lama_root) -> types.SimpleNamespace:
    """The upstream pieces the benchmarks use, imported from the checkout at `lama_root`."""
    root = str(pathlib.Path(lama_root).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise _missing(e.name or "torch", lama_root) from e
    _stub_torchvision()
    try:
        from saicinpainting.training import modules
        from saicinpainting.training.data import datasets
        from saicinpainting.training.losses import adversarial, perceptual
        from saicinpainting.training.trainers import base, default
        from models.ade20k import base as ade20k, resnet as ade20k_resnet
    except ImportError as e:
        raise _missing((e.name or str(e)).split(".")[0], lama_root) from e
    return types.SimpleNamespace(
        make_generator=modules.make_generator, make_discriminator=modules.make_discriminator,
        make_discrim_loss=adversarial.make_discrim_loss, ResNetPL=perceptual.ResNetPL,
        ResnetDilated=ade20k.ResnetDilated, resnet50=ade20k_resnet.resnet50,
        BaseInpaintingTrainingModule=base.BaseInpaintingTrainingModule,
        DefaultInpaintingTrainingModule=default.DefaultInpaintingTrainingModule,
        make_default_train_dataloader=datasets.make_default_train_dataloader,
        OmegaConf=default.OmegaConf,  # what upstream's trainer reads its config with
    )


def torch_generator(lama_root, *, seed: int = 0, device: str = "cpu",
                    config: Optional[UpstreamConfig] = None):
    """Upstream's FFCResNetGenerator with `config`'s kwargs (default big-lama's), seeded init, float32."""
    import torch

    config = config or UpstreamConfig.from_lama_jax()
    upstream = import_upstream(lama_root)
    torch.manual_seed(seed)
    return upstream.make_generator(None, kind="ffc_resnet", **config.generator_kwargs()).float().to(device)


def lama_jax_model_config(config: UpstreamConfig) -> Dict[str, Any]:
    """The lama_jax `config.model` that holds the same networks as `config`."""
    return {"generator": dict(ngf=config.ngf, n_downsampling=config.n_downsampling, n_blocks=config.n_blocks,
                              ratio=config.ratio, enable_lfu=config.enable_lfu),
            "discriminator": dict(ndf=config.ndf, n_layers=config.n_layers)}


def state_dict_numpy(module) -> Dict[str, Any]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def generator_variables_from_torch(module, config: Optional[UpstreamConfig] = None):
    """lama_jax variables holding the weights of an upstream generator built with `config`."""
    from lama_jax import convert

    cfg = lama_jax_model_config(config or UpstreamConfig.from_lama_jax())["generator"]
    return convert.convert_generator(state_dict_numpy(module), cfg, source="upstream generator")


def _random_encoder_state(upstream):
    """A seeded random ADE20k `resnet50dilated` encoder state dict, built by upstream's classes."""
    encoder = upstream.ResnetDilated(upstream.resnet50(pretrained=False), dilate_scale=8)
    return encoder.state_dict()


def _training_module(upstream, config: UpstreamConfig, generator, discriminator, resnet_pl):
    import torch

    default, base = upstream.DefaultInpaintingTrainingModule, upstream.BaseInpaintingTrainingModule
    cls = type("UpstreamTrainingStep", (torch.nn.Module,), {
        "forward": default.forward, "generator_loss": default.generator_loss,
        "discriminator_loss": default.discriminator_loss, "_do_step": base._do_step,
        "get_ddp_rank": lambda self: None,
    })
    module = cls()
    module.generator, module.discriminator, module.loss_resnet_pl = generator, discriminator, resnet_pl
    module.adversarial_loss = upstream.make_discrim_loss(
        kind="r1", weight=config.adversarial_weight, gp_coef=config.r1_weight,
        mask_as_fake_target=config.mask_as_fake_target, allow_scale_mask=config.allow_scale_mask)
    module.config = upstream.OmegaConf.create({"losses": {
        "l1": {"weight_known": config.l1_weight_known, "weight_missing": config.l1_weight_missing},
        "perceptual": {"weight": 0},
        "adversarial": {"weight": config.adversarial_weight},
        "feature_matching": {"weight": config.feature_matching_weight},
    }})
    # DefaultInpaintingTrainingModule.__init__'s values for big-lama.yaml's training_model section.
    module.concat_mask, module.image_to_discriminator = True, "predicted_image"
    module.rescale_size_getter = module.add_noise_kwargs = module.const_area_crop_kwargs = None
    module.refine_mask_for_losses, module.noise_fill_hole = None, False
    module.distance_weighted_mask_for_discr, module.fake_fakes_proba = False, 0
    module.visualize_each_iters = 1000
    module.train()  # Lightning trains with every submodule in train mode, the HRF encoder's BN included
    return module


@dataclasses.dataclass
class TorchTraining:
    """An upstream training setup: `step(batch)` runs one G+D iteration and returns its losses."""

    module: Any
    step: Callable[[Dict[str, Any]], Dict[str, float]]

    def state_dicts(self) -> Dict[str, Dict[str, Any]]:
        networks = {"generator": self.module.generator, "discriminator": self.module.discriminator}
        if self.module.loss_resnet_pl is not None:
            networks["resnet_pl"] = self.module.loss_resnet_pl.impl
        return {name: state_dict_numpy(net) for name, net in networks.items()}


def torch_training(lama_root, *, seed: int = 0, device: str = "cpu",
                   config: Optional[UpstreamConfig] = None) -> TorchTraining:
    import torch

    config = config or UpstreamConfig.from_lama_jax()
    upstream = import_upstream(lama_root)
    generator = torch_generator(lama_root, seed=seed, device=device, config=config)
    torch.manual_seed(seed + 1)
    discriminator = upstream.make_discriminator(kind="pix2pixhd_nlayer", input_nc=3, ndf=config.ndf,
                                                n_layers=config.n_layers).float().to(device)
    resnet_pl = None
    if config.resnet_pl_weight:
        torch.manual_seed(seed + 2)
        with tempfile.TemporaryDirectory() as folder:
            # ResNetPL loads its encoder from weights_path/ade20k/...; give it a seeded random one.
            path = pathlib.Path(folder, "ade20k", "ade20k-resnet50dilated-ppm_deepsup", "encoder_epoch_20.pth")
            path.parent.mkdir(parents=True)
            torch.save(_random_encoder_state(upstream), path)
            resnet_pl = upstream.ResNetPL(weight=config.resnet_pl_weight, weights_path=folder).to(device)
    module = _training_module(upstream, config, generator, discriminator, resnet_pl)
    optimizers = [(torch.optim.Adam(generator.parameters(), lr=config.generator_lr), generator),
                  (torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_lr), discriminator)]

    def step(batch):
        losses = {}
        for index, (optimizer, network) in enumerate(optimizers):
            tensors = {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).to(device) for k, v in batch.items()}
            # Lightning 1.2.9 with several optimizers toggles them: the other optimizer's parameters do not
            # require gradients during this one's pass, so G's backward computes no D weight gradients.
            other = optimizers[1 - index][1]
            other.requires_grad_(False)
            # batch_idx 1: not a multiple of visualize_each_iters, so the visualiser is not run.
            result = module._do_step(tensors, 1, mode="train", optimizer_idx=index)
            result["loss"].backward()
            other.requires_grad_(True)
            norm = torch.nn.utils.clip_grad_norm_(network.parameters(), config.clip_norm)  # before clipping
            optimizer.step()
            optimizer.zero_grad()
            losses.update({k.removeprefix("train_"): float(v.detach()) for k, v in result["log_info"].items()})
            name = ("generator", "discriminator")[index]
            losses[f"{name}_grad_norm"] = float(norm)
            losses["gen_total" if index == 0 else "discr_total"] = float(result["loss"].detach())
        return losses

    return TorchTraining(module, step)


# --- timing helpers and the worker that compare_pytorch.py drives ---------------------------------


def machine_info() -> Dict[str, Any]:
    """What identifies the machine a measurement ran on, and how busy it was."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        boot_id = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    return {"hostname": socket.gethostname(), "cpu": cpu, "boot_id": boot_id,
            "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg()}


def inpaint(generator, image, mask):
    """Eval-mode inpainting with upstream's model input: the masked image and the mask, 4 channels."""
    import torch

    with torch.no_grad():
        x = torch.cat([image * (1 - mask), mask], dim=1)
        predicted = generator(x)
        return mask * predicted + (1 - mask) * image


class Worker:
    """The torch side of a comparison: keeps upstream's networks between requests."""

    def __init__(self, lama_root, threads: int):
        import torch

        self.lama_root, self.upstream = lama_root, import_upstream(lama_root)
        torch.set_num_threads(threads)
        self.arrays: Dict[str, Dict[str, Any]] = {}
        self.loaders: Dict[str, Any] = {}
        self.conv_inputs: Dict[str, Any] = {}

    def _batch(self, path: str, layout: str = "nchw"):
        import numpy as np
        import torch

        if path not in self.arrays:
            with np.load(path) as data:
                self.arrays[path] = {k: data[k] for k in data.files}
        if layout == "nhwc":
            return self.arrays[path]
        return {k: torch.from_numpy(v.transpose(0, 3, 1, 2).copy()) for k, v in self.arrays[path].items()}

    def op_machine(self):
        import torch

        return dict(machine_info(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                    python=platform.python_version())

    def op_setup(self, config, seed, weights):
        """Builds the networks from `seed` and writes their state dicts to the .npz `weights`."""
        import copy

        start = time.perf_counter()
        self.config = UpstreamConfig(**config)
        self.seed = seed
        self.training = torch_training(self.lama_root, seed=seed, config=self.config)
        self.eval_generator = copy.deepcopy(self.training.module.generator).eval()
        self.bench_generator = copy.deepcopy(self.training.module.generator).train()
        self.op_weights(weights)
        return {"setup_s": time.perf_counter() - start}

    def op_weights(self, path):
        """Writes the training networks' current state dicts to the .npz `path`."""
        import numpy as np

        np.savez(path, **{f"{net}/{key}": value for net, state in self.training.state_dicts().items()
                          for key, value in state.items()})
        return {}

    def op_eval(self, batch, output=None):
        import numpy as np

        tensors = self._batch(batch)
        start = time.perf_counter()
        inpainted = inpaint(self.eval_generator, tensors["image"], tensors["mask"])
        seconds = time.perf_counter() - start
        if output:
            np.save(output, inpainted.numpy().transpose(0, 2, 3, 1))
        return {"seconds": seconds}

    def op_fwd_bwd(self, batch):
        import torch

        tensors = self._batch(batch)
        x = torch.cat([tensors["image"] * (1 - tensors["mask"]), tensors["mask"]], dim=1)
        start = time.perf_counter()
        self.bench_generator(x).mean().backward()
        seconds = time.perf_counter() - start
        self.bench_generator.zero_grad(set_to_none=True)
        return {"seconds": seconds}

    def op_first_step_with_threads(self, batch, threads):
        """The first iteration's losses of a fresh copy of the training setup, run on `threads` threads:
        upstream against itself with another summation order, the floor for any parity comparison."""
        import torch

        arrays = self._batch(batch, layout="nhwc")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            losses = torch_training(self.lama_root, seed=self.seed, config=self.config).step(arrays)
        finally:
            torch.set_num_threads(before)
        return {"losses": losses}

    def op_train_step(self, batch):
        arrays = self._batch(batch, layout="nhwc")
        start = time.perf_counter()
        losses = self.training.step(arrays)
        return {"seconds": time.perf_counter() - start, "losses": losses}

    def op_conv(self, mode, inputs):
        """Seconds of one 3x3 conv (zero padding 1) of the .npz `inputs` (x NHWC, kernel HWIO, as
        compare_pytorch's lama_jax side runs them): "fwd", or "fwd_bwd" with both gradients."""
        import numpy as np
        import torch

        if inputs not in self.conv_inputs:
            with np.load(inputs) as data:
                self.conv_inputs[inputs] = (torch.from_numpy(data["x"].transpose(0, 3, 1, 2).copy()),
                                            torch.from_numpy(data["kernel"].transpose(3, 2, 0, 1).copy()))
        x, kernel = (t.detach().requires_grad_(mode == "fwd_bwd") for t in self.conv_inputs[inputs])
        start = time.perf_counter()
        if mode == "fwd":
            with torch.no_grad():
                torch.nn.functional.conv2d(x, kernel, padding=1)
        else:
            y = torch.nn.functional.conv2d(x, kernel, padding=1)
            torch.autograd.grad(y, (x, kernel), grad_outputs=y.detach())
        return {"seconds": time.perf_counter() - start}

    def op_loader(self, images, samples, batch_size, core, out_size, mask_kwargs):
        """`samples` training samples through upstream's train dataloader (no workers) on one core."""
        import cv2
        import torch

        key = json.dumps([images, batch_size, out_size, mask_kwargs])
        if key not in self.loaders:
            loader = self.upstream.make_default_train_dataloader(
                indir=images, kind="default", out_size=out_size, mask_gen_kwargs=mask_kwargs,
                transform_variant="distortions",
                dataloader_kwargs=dict(batch_size=batch_size, shuffle=True, num_workers=0))
            self.loaders[key] = _forever(loader)
        iterator = self.loaders[key]
        cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
        os.sched_setaffinity(0, {core})
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        try:
            next(iterator)  # warm caches on this core
            start, start_cpu = time.perf_counter(), time.process_time()
            produced = 0
            while produced < samples:
                # Counted, not assumed: an epoch of fewer images than batch_size ends in a short batch.
                produced += len(next(iterator)["image"])
            seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        finally:
            os.sched_setaffinity(0, cores)
            torch.set_num_threads(threads)
        return {"seconds": seconds, "cpu_seconds": cpu, "samples": produced}


def _forever(loader):
    while True:
        yield from loader


def device_benchmark(lama_root, batches: str, step_batches, repeats: int, seconds: float, config: dict):
    """benchmarks/accelerator.py's PyTorch part: upstream's generator eval and training step in float32
    on torch's device (CUDA when present), on the batches of the .npz `batches` ("eval/image",
    "step15/mask", ...). A batch size whose steps would run past `seconds` is skipped with a note."""
    try:
        import numpy as np
        import torch
    except ImportError as e:
        raise _missing(e.name or "torch", lama_root) from e

    deadline = time.perf_counter() + seconds
    config = UpstreamConfig(**config)
    with np.load(batches) as data:
        arrays = {key: data[key] for key in data.files}
    batch = lambda name: {k: arrays[f"{name}/{k}"] for k in ("image", "mask")}  # noqa: E731
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = dict(device=device, torch=torch.__version__, train_steps=[], skipped=[])
    if device == "cuda":
        result["device_name"] = torch.cuda.get_device_name(0)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    generator = torch_generator(lama_root, seed=0, device=device, config=config).eval()
    image, mask = (torch.from_numpy(v.transpose(0, 3, 1, 2).copy()).to(device) for v in batch("eval").values())
    inpaint(generator, image, mask)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        inpaint(generator, image, mask)
    sync()
    result["eval"] = dict(size=image.shape[-1], ms_per_image=(time.perf_counter() - start) / repeats * 1e3)
    del generator
    seconds_per_image = None
    for batch_size in step_batches:
        if seconds_per_image is not None and seconds_per_image * batch_size > deadline - time.perf_counter():
            result["skipped"].append(dict(per_device_batch=batch_size, note="skipped: the budget would be exceeded"))
            continue
        started = time.perf_counter()
        step = torch_training(lama_root, seed=0, device=device, config=config).step
        step_batch = batch(f"step{batch_size}")
        step(step_batch)  # warm-up
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            step(step_batch)
        sync()
        seconds_per_step = (time.perf_counter() - start) / repeats
        result["train_steps"].append(dict(per_device_batch=batch_size, ms_per_step=seconds_per_step * 1e3,
                                          img_per_s=batch_size / seconds_per_step))
        seconds_per_image = (time.perf_counter() - started) / batch_size
        del step
        if device == "cuda":
            torch.cuda.empty_cache()
    if device == "cuda":
        result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    return result


def serve(lama_root, threads: int, requests=sys.stdin, replies=None) -> None:
    """Answers one JSON request {"op": name, **arguments} per line with one JSON line."""
    replies = replies or sys.stdout
    sys.stdout = sys.stderr  # anything upstream prints must not mix with the replies
    worker = None
    for line in requests:
        request = json.loads(line)
        try:
            if worker is None:
                worker = Worker(lama_root, threads)
            reply = getattr(worker, "op_" + request.pop("op"))(**request)
        except UpstreamUnavailable as e:
            reply = {"error": str(e), "unavailable": True}
        except Exception as e:  # reported to the driver, which stops with this message
            reply = {"error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="The upstream LaMa side of benchmarks/compare_pytorch.py and benchmarks/accelerator.py.")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help="answer compare_pytorch.py's requests on stdin")
    mode.add_argument("--device-benchmark", metavar="REQUEST", help="accelerator.py's PyTorch part (JSON)")
    parser.add_argument("--lama-root")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    if args.device_benchmark:
        try:
            result = device_benchmark(**json.loads(args.device_benchmark))
        except UpstreamUnavailable as e:
            result = {"unavailable": str(e)}
        print(json.dumps(result))
        return
    if not args.lama_root:
        parser.error("--serve needs --lama-root")
    serve(args.lama_root, args.threads)


if __name__ == "__main__":
    main()
