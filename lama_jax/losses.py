"""LaMa's training losses (docs/parity.md, "Losses") as pure functions of arrays.

Images are NHWC float32 in [0, 1]; masks are (B, H, W, 1) with 1 = hole.
Every function returns the *unweighted* term; the train step multiplies by
the config weights, so each weighted value equals the reference's logged one:

    generator      = w_l1 * masked_l1  (known 10, missing 0 inside masked_l1)
                   + 10  * generator_adversarial          (non-saturating)
                   + 100 * feature_matching               (mean of 5 MSEs)
                   + 30  * perceptual_feature_loss        (HRF: sum of 4 MSEs)
    discriminator  = discriminator_real + discriminator_fake + 0.001 * R1

`r1_penalty` needs the discriminator itself (a gradient with respect to its
input), so it takes the network as a function; `resnet_pl_features` runs the
frozen ResNet50-dilated encoder on ImageNet-normalised images. Everything is
computed in float32 whatever dtype the networks run in.
"""

from typing import Callable, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def masked_l1(pred: jax.Array, target: jax.Array, mask: jax.Array, *, weight_known: float,
              weight_missing: float) -> jax.Array:
    """mean(|pred - target| * (weight_known * (1 - mask) + weight_missing * mask)).

    The mean runs over all B*H*W*3 elements, hole pixels included: the
    reference does not renormalise by the number of known pixels.
    """
    pixel_weights = weight_known * (1.0 - mask) + weight_missing * mask
    return jnp.mean(jnp.abs(pred - target) * pixel_weights)


def generator_adversarial(fake_logits: jax.Array) -> jax.Array:
    """Non-saturating generator term: mean(softplus(-D(fake)))."""
    return jnp.mean(jax.nn.softplus(-fake_logits))


def discriminator_real(real_logits: jax.Array) -> jax.Array:
    """mean(softplus(-D(real))): real patches should score high."""
    return jnp.mean(jax.nn.softplus(-real_logits))


def torch_legacy_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source rows/columns of PyTorch's legacy `F.interpolate(mode="nearest")`.

    PyTorch picks floor(dst * (in / out)) computed in float32 (with shortcuts
    for equal and doubled sizes); `jax.image.resize` samples pixel centres and
    picks different rows.
    """
    dst = np.arange(out_size)
    if out_size == in_size:
        return dst
    if out_size == 2 * in_size:
        return dst >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(dst.astype(np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def resize_mask_nearest(mask: jax.Array, height: int, width: int) -> jax.Array:
    """(B, H, W, C) -> (B, height, width, C) with PyTorch's legacy nearest rule."""
    rows = torch_legacy_nearest_indices(mask.shape[1], height)
    cols = torch_legacy_nearest_indices(mask.shape[2], width)
    return mask[:, rows][:, :, cols]


def discriminator_fake(fake_logits: jax.Array, mask: jax.Array, *, mask_as_fake_target: bool,
                       allow_scale_mask: bool) -> jax.Array:
    """The discriminator's term on generated images.

    With `mask_as_fake_target` only hole patches are labelled fake and the
    known-region patches of the generated image are labelled real:
    mean(m * softplus(D) + (1 - m) * softplus(-D)) with m the mask at the
    logit resolution. Without it every patch is fake: mean(softplus(D)).
    """
    fake_term = jax.nn.softplus(fake_logits)
    if not mask_as_fake_target:
        return jnp.mean(fake_term)
    height, width = fake_logits.shape[1:3]
    if mask.shape[1:3] != (height, width):
        if not allow_scale_mask:
            raise ValueError(
                f"discriminator_fake: mask is {mask.shape[1]}x{mask.shape[2]} but the logits are "
                f"{height}x{width}; set losses.allow_scale_mask=True to resize it"
            )
        mask = resize_mask_nearest(mask, height, width)
    return jnp.mean(mask * fake_term + (1.0 - mask) * jax.nn.softplus(-fake_logits))


def r1_penalty(real_logits_fn: Callable, real: jax.Array):
    """R1 gradient penalty and the forward pass it was computed from.

    `real_logits_fn(real) -> (logits, aux)`. Returns `(penalty, logits, aux)`
    where penalty = mean_b ||d sum(logits) / d real_b||^2, the gradient of the
    sum of *all* real logits, squared L2 norm per sample over H*W*C, batch mean.
    Differentiating the penalty again (as the D loss does) gives the
    reference's double backprop into the discriminator's parameters.
    """

    def logits_sum(images):
        logits, aux = real_logits_fn(images)
        return jnp.sum(logits), (logits, aux)

    (_, (logits, aux)), grad_real = jax.value_and_grad(logits_sum, has_aux=True)(real)
    per_sample = jnp.sum(jnp.square(grad_real), axis=tuple(range(1, grad_real.ndim)))
    return jnp.mean(per_sample), logits, aux


def mean_squared_errors(first: Sequence[jax.Array], second: Sequence[jax.Array]) -> jax.Array:
    """Per-pair MSE (each averaged over all its elements) in float32, stacked."""
    if len(first) != len(second):
        raise ValueError(f"mean_squared_errors: {len(first)} feature maps against {len(second)}")
    return jnp.stack([
        jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32))) for a, b in zip(first, second)
    ])


def feature_matching(fake_features: Sequence[jax.Array], real_features: Sequence[jax.Array]) -> jax.Array:
    """Discriminator feature matching: the *mean* of the per-layer MSEs (5 layers for LaMa's D)."""
    return jnp.mean(mean_squared_errors(fake_features, real_features))


def perceptual_feature_loss(pred_features: Sequence[jax.Array], target_features: Sequence[jax.Array]) -> jax.Array:
    """High-receptive-field perceptual loss: the *sum* (not the mean) of the per-layer MSEs (4 ResNet layers)."""
    return jnp.sum(mean_squared_errors(pred_features, target_features))


def imagenet_normalize(images: jax.Array) -> jax.Array:
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (images - mean) / std


def resnet_pl_features(encoder: nn.Module, variables, images: jax.Array, *, batch_stats: bool,
                       groups: int = 1) -> Tuple[jax.Array, ...]:
    """The four ResNet50-dilated feature maps of ImageNet-normalised `images`.

    `batch_stats=True` normalises with the statistics of this call's batch, as
    the reference does while training (its encoder is put back in train mode
    by Lightning); the running-statistic updates that causes are
    discarded because the encoder is frozen. `groups` splits the batch into
    contiguous slices with separate statistics (per-device semantics).
    `batch_stats=False` uses the frozen running statistics.
    """
    normalized = imagenet_normalize(images)
    if not batch_stats:
        return tuple(encoder.apply(variables, normalized, train=False))

    def run(group_images):
        features, _ = encoder.apply(variables, group_images, train=True, mutable=["batch_stats"])
        return tuple(features)

    batch = images.shape[0]
    if groups == 1:
        return run(normalized)
    if batch % groups:
        raise ValueError(f"resnet_pl_features: batch {batch} is not divisible into {groups} statistic groups")
    grouped = normalized.reshape(groups, batch // groups, *normalized.shape[1:])
    features = jax.vmap(run)(grouped)
    return tuple(f.reshape(batch, *f.shape[2:]) for f in features)
