"""LaMa's adversarial training step: train state, generator and discriminator updates, sharding.

One iteration of the reference trainer (docs/parity.md, "Optimisation and step order") on a batch
`{"image": (B, H, W, 3) float32 in [0, 1], "mask": (B, H, W, 1) float32, 1 = hole}`:

1. **Generator step.** G forward (train-mode BN), D on the real image, then on
   the prediction (separate calls, train-mode BN, D frozen), the loss
   L1(known) + adversarial + feature matching + HRF perceptual, per-optimizer
   gradient clipping (`min(1, clip / (norm + 1e-6))`), Adam on G.
2. **Discriminator step.** G runs *again* with the weights just updated (so
   G's BN statistics move twice per iteration), the prediction is detached, D
   runs on the real image with an R1 penalty (double backprop) and on the
   prediction with the mask as the fake target; clipping, Adam on D.

`config.train.step_mode = "fused"` reuses the generator step's prediction in
the discriminator step instead of re-running G: one G forward less per
iteration (~16 % of the work at 256²). It is a deviation from the reference:
D learns from fakes of G_t instead of G_{t+1}, and G's BN statistics move once.

The train state is a plain dict, so Orbax `StandardSave` checkpoints it as is:

    step                    int32 scalar, iterations done
    rng                     uint32 key data; the step folds it with `step`
    generator               {"params", "batch_stats"}
    discriminator           {"params", "batch_stats"}
    generator_opt_state     optax state (clip + Adam) of the generator
    discriminator_opt_state optax state of the discriminator
    resnet_pl               {"params", "batch_stats"} of the frozen HRF encoder
                            (present only when losses.resnet_pl_weight > 0)

Parallelism is data-parallel `jax.jit` over a 1-D mesh with axis `data`: the
batch is sharded along it, the state replicated and donated (do not reuse a
state after passing it to the step). BatchNorm statistics follow
`config.train.batch_norm`: "per_device" (the default) gives every device's
slice its own statistics, which is what the reference's DDP training without
SyncBatchNorm does, so a device here plays one of its GPUs; "global"
normalises over the whole global batch (synchronised BN) and gives the same
result on any number of devices. Losses are means over the global batch,
i.e. DDP's averaged gradients. The HRF encoder's BN follows
`config.losses.resnet_pl_bn`: "batch" (the default, what the reference does
while training because Lightning puts the encoder back in train mode) or
"running" (frozen statistics). `config.train.compute_dtype = "bfloat16"` runs
the convolutions in bfloat16; parameters, FFTs, BN statistics and losses stay
float32.

Use from a training loop (what `lama_jax.train` builds on):

    mesh = train_step.make_mesh()
    state = train_step.create_train_state(config, jax.random.key(config.seed),
                                          resnet_pl_variables=encoder, mesh=mesh)
    step_fn = train_step.make_train_step(config, mesh)
    for host_batch in batches:                         # this process's share, numpy
        state, metrics = step_fn(state, train_step.shard_batch(host_batch, mesh))
    predict = train_step.make_predict_fn(config, mesh)  # eval-mode generator
    outputs = predict(state["generator"], train_step.shard_batch(eval_batch, mesh))

`metrics` is a flat dict of float32 scalars: gen_l1, gen_adv, gen_fm,
gen_resnet_pl, gen_total, discr_real, discr_fake, discr_r1, discr_total (each
already weighted, disabled terms 0), discr_real_out / discr_fake_out (mean
logits), {generator,discriminator}_{grad,param}_norm (gradient norms before
clipping) and {generator,discriminator}_lr.
"""

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lama_jax import inference, losses
from lama_jax.models import ResNet50Dilated, build_discriminator, build_generator, compute_dtype

DATA_AXIS = "data"
# Spatial size used only to trace parameter shapes at init; every network is fully convolutional.
_INIT_SIZE = 64

TrainState = Dict[str, Any]
Metrics = Dict[str, jax.Array]

_CHOICES = {
    ("train", "step_mode"): ("reference", "fused"),
    ("train", "batch_norm"): ("global", "per_device"),
    ("train", "compute_dtype"): ("float32", "bfloat16"),
    ("losses", "resnet_pl_bn"): ("batch", "running"),
}


def validate_config(config) -> None:
    """Raises ValueError naming a config.train/losses choice that is not one of the supported values."""
    for (section, key), allowed in _CHOICES.items():
        value = config[section][key]
        if value not in allowed:
            raise ValueError(f"config.{section}.{key} = {value!r}; expected one of {allowed}")


# ---------------------------------------------------------------------------------------------
# Optimisers


def reference_clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """PyTorch-Lightning's clipping, per optimizer: scale by min(1, max_norm / (norm + 1e-6)).

    optax.clip_by_global_norm uses max_norm / max(norm, max_norm) without the
    1e-6; the difference is ~1e-6 relative but breaks exact parity.
    """

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizers(config) -> Tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(generator, discriminator) optimisers: reference clipping then Adam, one per network."""
    return _optimizer_pair(_optimizer_settings(config))


def _optimizer_settings(config) -> Tuple[float, ...]:
    optim = config.optim
    return optim.generator_lr, optim.discriminator_lr, optim.b1, optim.b2, optim.eps, optim.clip_norm


def _optimizer_pair(settings: Tuple[float, ...]):
    generator_lr, discriminator_lr, b1, b2, eps, clip_norm = settings

    def adam(lr):
        return optax.chain(reference_clip_by_global_norm(clip_norm), optax.adam(lr, b1=b1, b2=b2, eps=eps))

    return adam(generator_lr), adam(discriminator_lr)


# ---------------------------------------------------------------------------------------------
# Train state


def _as_key(rng: jax.Array) -> jax.Array:
    """Accepts a typed key or raw key data (the form the state stores)."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    return jax.random.wrap_key_data(rng)


def _initializer_key(key: jax.Array) -> jax.Array:
    """An RBG key drawn from `key` for parameter initialisation.

    XLA compiles its RngBitGenerator several times faster than threefry for
    the hundreds of initialiser draws (about 5 s instead of 20 s for the
    ResNet-50 on 2 CPU cores); draws stay deterministic per seed and platform.
    """
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")


def _check_variables(name: str, given, expected) -> None:
    """Raises ValueError naming every leaf whose path or shape differs from `expected`."""
    given_shapes = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(given)}
    expected_shapes = {jax.tree_util.keystr(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    problems = [f"missing {k}" for k in expected_shapes if k not in given_shapes]
    problems += [f"unexpected {k}" for k in given_shapes if k not in expected_shapes]
    problems += [f"{k}: shape {given_shapes[k]}, expected {s}" for k, s in expected_shapes.items()
                 if k in given_shapes and tuple(given_shapes[k]) != tuple(s)]
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... ({len(problems)} in all)" if len(problems) > 10 else "")
        raise ValueError(f"create_train_state: {name}_variables do not match config.model: {shown}")


@functools.lru_cache(maxsize=8)
def _state_initializer(generator: nn.Module, discriminator: nn.Module, optimizer_settings: Tuple[float, ...],
                       use_resnet_pl: bool, mesh: Optional[Mesh]):
    """The jitted `init(keys, given variables) -> state`, cached so that repeated calls compile once."""
    g_tx, d_tx = _optimizer_pair(optimizer_settings)

    def init(train_key, g_key, d_key, pl_key, given_g, given_d, given_pl):
        image = jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 3), jnp.float32)
        g_vars = given_g or generator.init(g_key, jnp.zeros((1, _INIT_SIZE, _INIT_SIZE, 4)), train=False)
        d_vars = given_d or discriminator.init(d_key, image, train=False)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(train_key),
            "generator": g_vars,
            "discriminator": d_vars,
            "generator_opt_state": g_tx.init(g_vars["params"]),
            "discriminator_opt_state": d_tx.init(d_vars["params"]),
        }
        if use_resnet_pl:
            state["resnet_pl"] = given_pl or ResNet50Dilated().init(pl_key, image, train=False)
        return state

    shardings = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(init, out_shardings=shardings)


def create_train_state(config, rng: jax.Array, *, resnet_pl_variables=None, generator_variables=None,
                       discriminator_variables=None, mesh: Optional[Mesh] = None) -> TrainState:
    """A fresh train state; given variables (e.g. converted PyTorch weights) replace the random init.

    Variables are `{"params", "batch_stats"}` trees shaped like config.model's
    networks. `resnet_pl_variables` is the frozen HRF encoder; without it (and
    with a non-zero resnet_pl_weight) the encoder is random, which only suits
    smoke tests and speed measurements. With `mesh` the state is created
    replicated on it.
    """
    validate_config(config)
    train_key, init_key = jax.random.split(_as_key(rng))
    keys = (train_key, *jax.random.split(_initializer_key(init_key), 3))
    use_resnet_pl = config.losses.resnet_pl_weight > 0
    init = _state_initializer(build_generator(config.model.generator),
                              build_discriminator(config.model.discriminator),
                              _optimizer_settings(config), use_resnet_pl, mesh)

    given = {"generator": generator_variables, "discriminator": discriminator_variables,
             "resnet_pl": resnet_pl_variables if use_resnet_pl else None}
    abstract = jax.eval_shape(init, *keys, None, None, None)
    for name, variables in given.items():
        if variables is None:
            continue
        if not isinstance(variables, Mapping) or not {"params", "batch_stats"} <= set(variables):
            raise ValueError(f"create_train_state: {name}_variables must be a mapping with 'params' and "
                             f"'batch_stats', got {type(variables).__name__} "
                             f"{sorted(variables) if isinstance(variables, Mapping) else ''}")
        given[name] = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        _check_variables(name, given[name], abstract[name])
    return init(*keys, *given.values())


# ---------------------------------------------------------------------------------------------
# Losses and the two optimiser steps


def _apply_train(module: nn.Module, variables, x, rngs):
    """A train-mode forward: (outputs, updated batch_stats)."""
    outputs, updates = module.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
    return outputs, updates["batch_stats"]


def _global_norm(tree) -> jax.Array:
    return optax.tree.norm(tree).astype(jnp.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class LamaSteps:
    """The networks, loss settings and optimisers of one config, and the step functions built on them."""

    generator: nn.Module
    discriminator: nn.Module
    resnet_pl: nn.Module
    loss_config: Mapping[str, Any]
    step_mode: str
    bn_groups: int
    generator_tx: optax.GradientTransformation
    discriminator_tx: optax.GradientTransformation
    generator_lr: float
    discriminator_lr: float

    @classmethod
    def from_config(cls, config, *, bn_groups: int = 1, platform: Optional[str] = None,
                    device_kind: Optional[str] = None) -> "LamaSteps":
        """`bn_groups`: BatchNorm statistic groups along the batch (1 = global statistics); `platform`
        and `device_kind`: the devices the program is built for (default: JAX's default backend)."""
        validate_config(config)
        dtype = config.train.compute_dtype
        g_tx, d_tx = make_optimizers(config)
        return cls(
            generator=build_generator(config.model.generator, bn_groups=bn_groups, dtype=dtype, platform=platform),
            discriminator=build_discriminator(config.model.discriminator, bn_groups=bn_groups, dtype=dtype,
                                              device_kind=device_kind),
            resnet_pl=ResNet50Dilated(dtype=compute_dtype(config.train.compute_dtype)),
            loss_config=config.losses.to_dict(),
            step_mode=config.train.step_mode,
            bn_groups=bn_groups,
            generator_tx=g_tx,
            discriminator_tx=d_tx,
            generator_lr=config.optim.generator_lr,
            discriminator_lr=config.optim.discriminator_lr,
        )

    # -- generator -------------------------------------------------------------------------

    def generator_forward(self, g_vars, batch, rngs):
        """Train-mode G on `image * (1 - mask)` and the mask: (prediction, G's new batch_stats)."""
        image, mask = batch["image"], batch["mask"]
        return _apply_train(self.generator, g_vars, inference.model_input(image, mask), rngs)

    def generator_loss(self, g_params, state: TrainState, batch, rngs):
        """Returns (total, (terms, prediction, G batch_stats, D batch_stats)); only G is differentiated.

        D runs in train mode on the real image, then on the prediction, and
        its BN statistics are updated by both calls, as in the reference.
        """
        w = self.loss_config
        image, mask = batch["image"], batch["mask"]
        pred, g_stats = self.generator_forward({"params": g_params, "batch_stats": state["generator"]["batch_stats"]},
                                               batch, rngs)
        d_params, d_stats = state["discriminator"]["params"], state["discriminator"]["batch_stats"]
        zero = jnp.zeros((), jnp.float32)
        terms = dict(gen_l1=zero, gen_adv=zero, gen_fm=zero, gen_resnet_pl=zero)

        if w["l1_weight_known"] or w["l1_weight_missing"]:
            terms["gen_l1"] = losses.masked_l1(pred, image, mask, weight_known=w["l1_weight_known"],
                                               weight_missing=w["l1_weight_missing"])
        if w["feature_matching_weight"]:
            (_, real_features), d_stats = _apply_train(
                self.discriminator, {"params": d_params, "batch_stats": d_stats}, image, rngs)
        if w["adversarial_weight"] or w["feature_matching_weight"]:
            (fake_logits, fake_features), d_stats = _apply_train(
                self.discriminator, {"params": d_params, "batch_stats": d_stats}, pred, rngs)
            if w["adversarial_weight"]:
                terms["gen_adv"] = w["adversarial_weight"] * losses.generator_adversarial(fake_logits)
            if w["feature_matching_weight"]:
                terms["gen_fm"] = w["feature_matching_weight"] * losses.feature_matching(fake_features,
                                                                                         real_features)
        if w["resnet_pl_weight"]:
            features = [
                losses.resnet_pl_features(self.resnet_pl, state["resnet_pl"], images,
                                          batch_stats=w["resnet_pl_bn"] == "batch", groups=self.bn_groups)
                for images in (pred, image)
            ]
            terms["gen_resnet_pl"] = w["resnet_pl_weight"] * losses.perceptual_feature_loss(*features)
        total = sum(terms.values())
        return total, (terms, pred, g_stats, d_stats)

    def generator_step(self, state: TrainState, batch, rngs):
        """One clipped Adam update of G. Returns (state, metrics, the prediction of the pre-update G)."""
        grad_fn = jax.value_and_grad(self.generator_loss, has_aux=True)
        (total, (terms, pred, g_stats, d_stats)), grads = grad_fn(state["generator"]["params"], state, batch, rngs)
        updates, opt_state = self.generator_tx.update(grads, state["generator_opt_state"],
                                                      state["generator"]["params"])
        params = optax.apply_updates(state["generator"]["params"], updates)
        state = dict(state, generator={"params": params, "batch_stats": g_stats},
                     discriminator=dict(state["discriminator"], batch_stats=d_stats),
                     generator_opt_state=opt_state)
        metrics = dict(terms, gen_total=total, generator_grad_norm=_global_norm(grads),
                       generator_param_norm=_global_norm(params))
        return state, metrics, pred

    # -- discriminator ---------------------------------------------------------------------

    def discriminator_loss(self, d_params, d_stats, batch, fake, rngs):
        """Returns (total, (terms, D batch_stats)); `fake` is a constant (the detached prediction)."""
        w = self.loss_config
        image, mask = batch["image"], batch["mask"]

        def real_logits_fn(images):
            (logits, _), stats = _apply_train(self.discriminator, {"params": d_params, "batch_stats": d_stats},
                                              images, rngs)
            return logits, stats

        if w["r1_weight"]:
            penalty, real_logits, d_stats = losses.r1_penalty(real_logits_fn, image)
            r1 = w["r1_weight"] * penalty
        else:
            (real_logits, d_stats), r1 = real_logits_fn(image), jnp.zeros((), jnp.float32)
        (fake_logits, _), d_stats = _apply_train(self.discriminator, {"params": d_params, "batch_stats": d_stats},
                                                 fake, rngs)
        terms = dict(
            discr_real=losses.discriminator_real(real_logits),
            discr_fake=losses.discriminator_fake(fake_logits, mask, mask_as_fake_target=w["mask_as_fake_target"],
                                                 allow_scale_mask=w["allow_scale_mask"]),
            discr_r1=r1,
        )
        # Logged by the reference as discr_real_out / discr_fake_out: the mean logits.
        logged = dict(discr_real_out=jnp.mean(real_logits), discr_fake_out=jnp.mean(fake_logits))
        return sum(terms.values()), (dict(terms, **logged), d_stats)

    def discriminator_step(self, state: TrainState, batch, fake, rngs):
        """One clipped Adam update of D against `fake`. Returns (state, metrics)."""
        grad_fn = jax.value_and_grad(self.discriminator_loss, has_aux=True)
        d_params = state["discriminator"]["params"]
        (total, (terms, d_stats)), grads = grad_fn(d_params, state["discriminator"]["batch_stats"], batch,
                                                   jax.lax.stop_gradient(fake), rngs)
        updates, opt_state = self.discriminator_tx.update(grads, state["discriminator_opt_state"], d_params)
        params = optax.apply_updates(d_params, updates)
        state = dict(state, discriminator={"params": params, "batch_stats": d_stats},
                     discriminator_opt_state=opt_state)
        metrics = dict(terms, discr_total=total, discriminator_grad_norm=_global_norm(grads),
                       discriminator_param_norm=_global_norm(params))
        return state, metrics

    # -- one iteration ---------------------------------------------------------------------

    def train_step(self, state: TrainState, batch) -> Tuple[TrainState, Metrics]:
        """G step then D step, in the reference's order; unjitted, see `make_train_step`."""
        # No LaMa layer is stochastic; any that is draws from this per-step key, so resuming reproduces it.
        rngs = {"dropout": jax.random.fold_in(_as_key(state["rng"]), state["step"])}
        state, g_metrics, pred = self.generator_step(state, batch, rngs)
        if self.step_mode == "reference":
            # Re-run G with the updated weights: D learns from G_{t+1}'s fakes; G's BN moves again.
            pred, g_stats = self.generator_forward(state["generator"], batch, rngs)
            state = dict(state, generator=dict(state["generator"], batch_stats=g_stats))
        state, d_metrics = self.discriminator_step(state, batch, pred, rngs)
        state = dict(state, step=state["step"] + 1)
        metrics = dict(g_metrics, **d_metrics,
                       generator_lr=jnp.float32(self.generator_lr),
                       discriminator_lr=jnp.float32(self.discriminator_lr))
        return state, {k: v.astype(jnp.float32) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# Parallelism: mesh, global batches, jitted steps


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis `data` over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
    """This process's part of a batch (numpy, leading batch axis) -> global arrays sharded over `data`.

    Every process passes its own rows; the global batch is their
    concatenation in process order, so multi-host training needs no change.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    devices_per_process = mesh.shape[DATA_AXIS] // jax.process_count()
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] % devices_per_process:
            raise ValueError(
                f"shard_batch: batch[{key!r}] has shape {value.shape}; its leading (batch) axis must be a "
                f"multiple of this process's {devices_per_process} devices on the '{DATA_AXIS}' axis"
            )
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def mesh_platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices ("cpu", "cuda", "tpu", ...): programs are built for it."""
    return mesh.devices.flat[0].platform


def steps_for_mesh(config, mesh: Mesh) -> LamaSteps:
    """`config`'s step functions built for `mesh`: BatchNorm groups by `train.batch_norm`, and the
    program choices of its devices' platform and chip ("TPU v4", ...)."""
    device = mesh.devices.flat[0]
    bn_groups = mesh.shape[DATA_AXIS] if config.train.batch_norm == "per_device" else 1
    return LamaSteps.from_config(config, bn_groups=bn_groups, platform=device.platform,
                                 device_kind=device.device_kind)


def make_train_step(config, mesh: Mesh):
    """`train_step(state, batch) -> (state, metrics)`, jitted over `mesh`; the state is donated."""
    steps = steps_for_mesh(config, mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    return jax.jit(steps.train_step, in_shardings=(replicated, batch_sharding),
                   out_shardings=(replicated, replicated), donate_argnums=0)


def make_predict_fn(config, mesh: Mesh):
    """`predict(generator_variables, batch) -> {"predicted_image", "inpainted"}`, eval-mode BN.

    The mask is binarised (> 0) as the reference's prediction does;
    inpainted = mask * predicted + (1 - mask) * image.
    """
    generator = build_generator(config.model.generator, dtype=config.train.compute_dtype,
                                platform=mesh_platform(mesh))
    replicated = NamedSharding(mesh, PartitionSpec())
    batch_sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))

    def predict(g_vars, batch):
        image, mask = batch["image"], (batch["mask"] > 0).astype(jnp.float32)
        predicted = generator.apply({"params": g_vars["params"], "batch_stats": g_vars["batch_stats"]},
                                    inference.model_input(image, mask), train=False)
        return {"predicted_image": predicted, "inpainted": inference.blend(predicted, image, mask)}

    return jax.jit(predict, in_shardings=(replicated, batch_sharding), out_shardings=batch_sharding)
