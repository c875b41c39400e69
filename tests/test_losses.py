"""Every LaMa loss term against the PyTorch reference (tests/fixtures/losses.npz, resnet_pl.npz).

The fixture ran the upstream trainer's loss methods on the small fixture
generator output with the ndf-16 discriminator in train mode; each weighted
term must match to 1e-5 relative (the fixtures README's tolerance for scalar losses).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_recipe
from lama_jax import convert, losses
from lama_jax.models import ResNet50Dilated, build_discriminator

DISCRIMINATOR_CFG = dict(ndf=16, n_layers=4)
SCALAR_RTOL = 1e-5


resnet_pl_features = jax.jit(functools.partial(losses.resnet_pl_features, ResNet50Dilated()),
                             static_argnames=("batch_stats", "groups"))


def nhwc(array):
    return jnp.asarray(np.asarray(array).transpose(0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
    with np.load(fixtures_dir / "losses.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def discriminator(fixture):
    state_dict = {k.removeprefix("discriminator/state_dict/"): v for k, v in fixture.items()
                  if k.startswith("discriminator/state_dict/")}
    variables = convert.convert_discriminator(state_dict, DISCRIMINATOR_CFG)
    module = build_discriminator(DISCRIMINATOR_CFG)

    @jax.jit
    def run(images):
        (logits, features), _ = module.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, features

    return run


@pytest.fixture(scope="module")
def batch(fixture):
    return {name: nhwc(fixture[f"input/{name}"]) for name in ("image", "mask", "predicted_image")}


@pytest.fixture(scope="module")
def resnet_pl_variables():
    return resnet_recipe.resnet_pl_variables()


def assert_scalar(actual, expected, rtol=SCALAR_RTOL):
    np.testing.assert_allclose(float(actual), float(expected), rtol=rtol)


def test_discriminator_outputs_match_reference(fixture, discriminator, batch):
    for kind, images in (("real", batch["image"]), ("fake", batch["predicted_image"])):
        logits, features = discriminator(images)
        np.testing.assert_allclose(logits, nhwc(fixture[f"components/discr_{kind}_logits"]), atol=2e-5)
        for k, feature in enumerate(features):
            expected = nhwc(fixture[f"components/discr_{kind}_feat{k}"])
            np.testing.assert_allclose(feature, expected, atol=1e-4 * np.abs(expected).max())


def test_masked_l1_matches_reference(fixture, batch):
    l1 = losses.masked_l1(batch["predicted_image"], batch["image"], batch["mask"], weight_known=10.0,
                          weight_missing=0.0)
    assert_scalar(l1, fixture["resnet_pl_train/gen_l1"])


def test_masked_l1_averages_over_all_pixels():
    pred, target = jnp.ones((1, 2, 2, 3)), jnp.zeros((1, 2, 2, 3))
    mask = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 2, 2, 1)
    # 3 known pixels out of 4 at weight 10, the hole at weight 0: 10 * 3/4, not 10.
    np.testing.assert_allclose(losses.masked_l1(pred, target, mask, weight_known=10.0, weight_missing=0.0), 7.5)


def test_generator_adversarial_and_feature_matching_match_reference(fixture, discriminator, batch):
    _, real_features = discriminator(batch["image"])
    fake_logits, fake_features = discriminator(batch["predicted_image"])
    assert_scalar(10.0 * losses.generator_adversarial(fake_logits), fixture["resnet_pl_train/gen_adv"])
    assert_scalar(100.0 * losses.feature_matching(fake_features, real_features), fixture["resnet_pl_train/gen_fm"])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_resnet_pl_loss_matches_reference(fixtures_dir, fixture, resnet_pl_variables, mode):
    with np.load(fixtures_dir / "resnet_pl.npz", allow_pickle=False) as f:
        pred, target = nhwc(f["input/pred"]), nhwc(f["input/target"])
        per_layer, last_target = f[f"{mode}/per_layer_mse"], nhwc(f[f"{mode}/target_feat3"])
    batch_stats = mode == "train"
    pred_features = resnet_pl_features(resnet_pl_variables, pred, batch_stats=batch_stats)
    target_features = resnet_pl_features(resnet_pl_variables, target, batch_stats=batch_stats)
    np.testing.assert_allclose(target_features[3], last_target, atol=1e-3 * np.abs(last_target).max())
    np.testing.assert_allclose(losses.mean_squared_errors(pred_features, target_features), per_layer, rtol=1e-4)
    # The fixture's pred is the same array as losses.npz's predicted_image, so this is the trainer's value.
    weighted = 30.0 * losses.perceptual_feature_loss(pred_features, target_features)
    assert_scalar(weighted, fixture[f"resnet_pl_{mode}/gen_resnet_pl"])
    total = (losses.masked_l1(pred, target, nhwc(fixture["input/mask"]), weight_known=10.0, weight_missing=0.0)
             + fixture["resnet_pl_train/gen_adv"] + fixture["resnet_pl_train/gen_fm"] + weighted)
    assert_scalar(total, fixture[f"resnet_pl_{mode}/gen_total"])


def test_resnet_pl_groups_normalise_each_slice_separately(resnet_pl_variables, batch):
    grouped = resnet_pl_features(resnet_pl_variables, batch["image"], batch_stats=True, groups=2)
    for i in range(2):
        alone = resnet_pl_features(resnet_pl_variables, batch["image"][i:i + 1], batch_stats=True)
        for g, a in zip(grouped, alone):
            np.testing.assert_allclose(g[i:i + 1], a, atol=1e-4 * float(jnp.abs(a).max()))


def test_legacy_nearest_picks_pytorch_rows():
    np.testing.assert_array_equal(losses.torch_legacy_nearest_indices(64, 7), [0, 9, 18, 27, 36, 45, 54])
    assert list(losses.torch_legacy_nearest_indices(256, 19)[:5]) == [0, 13, 26, 40, 53]
    assert losses.torch_legacy_nearest_indices(256, 19)[-1] == 242
    np.testing.assert_array_equal(losses.torch_legacy_nearest_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])


def test_mask_resize_matches_reference_and_differs_from_jax_nearest(fixture, batch):
    expected = nhwc(fixture["components/mask_at_discr_res"])
    resized = losses.resize_mask_nearest(batch["mask"], 7, 7)
    np.testing.assert_array_equal(resized, expected)
    centre_sampled = jax.image.resize(batch["mask"], (2, 7, 7, 1), "nearest")
    assert not np.array_equal(centre_sampled, expected)


def test_discriminator_loss_matches_reference(fixture, discriminator, batch):
    penalty, real_logits, _ = losses.r1_penalty(lambda x: (discriminator(x)[0], None), batch["image"])
    fake_logits, _ = discriminator(batch["predicted_image"])
    real = losses.discriminator_real(real_logits)
    fake = losses.discriminator_fake(fake_logits, batch["mask"], mask_as_fake_target=True, allow_scale_mask=True)
    assert_scalar(real, fixture["components/discr_real_loss"])
    assert_scalar(fake, fixture["components/discr_fake_loss"])
    assert_scalar(penalty, fixture["components/r1_penalty_raw"])
    assert_scalar(real + fake + 0.001 * penalty, fixture["resnet_pl_train/discr_total"])
    # The mean logits are logged metrics close to 0, so they get an absolute tolerance.
    np.testing.assert_allclose(jnp.mean(real_logits), fixture["resnet_pl_train/adv_discr_real_out"], atol=1e-6)
    np.testing.assert_allclose(jnp.mean(fake_logits), fixture["resnet_pl_train/adv_discr_fake_out"], atol=1e-6)


def test_r1_input_gradient_matches_reference(fixture, discriminator, batch):
    grad = jax.grad(lambda x: jnp.sum(discriminator(x)[0]))(batch["image"])
    expected = nhwc(fixture["components/r1_grad_wrt_real"])
    np.testing.assert_allclose(grad, expected, atol=1e-4 * np.abs(expected).max())


def test_discriminator_fake_without_mask_target_labels_everything_fake():
    logits = jnp.array([-1.0, 0.5, 2.0]).reshape(1, 1, 3, 1)
    loss = losses.discriminator_fake(logits, jnp.zeros((1, 8, 8, 1)), mask_as_fake_target=False,
                                     allow_scale_mask=False)
    np.testing.assert_allclose(loss, np.mean(np.log1p(np.exp([-1.0, 0.5, 2.0]))), rtol=1e-6)


def test_discriminator_fake_refuses_to_rescale_when_not_allowed():
    with pytest.raises(ValueError, match="mask is 64x64 but the logits are 7x7"):
        losses.discriminator_fake(jnp.zeros((1, 7, 7, 1)), jnp.zeros((1, 64, 64, 1)), mask_as_fake_target=True,
                                  allow_scale_mask=False)


def unit_direction(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    draws = [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(jax.random.split(key, len(leaves)), leaves)]
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(d)) for d in draws))
    return treedef.unflatten([d / norm for d in draws])


def directional_difference(fn, point, direction, eps):
    shifted = [jax.tree.map(lambda p, d, s=s: p + s * eps * d, point, direction) for s in (1.0, -1.0)]
    return (fn(shifted[0]) - fn(shifted[1])) / (2 * eps)


def tree_dot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_r1_parameter_gradient_matches_finite_difference():
    """The double backprop d R1 / d params against a central difference, in float64.

    LaMa's discriminator is piecewise linear (LeakyReLU), so its R1 jumps where
    an activation changes sign; a smooth stand-in network checks the
    second-order path that `jax.grad` of the penalty takes.
    """
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(3), 3)
        params = {"conv": 0.5 * jax.random.normal(keys[0], (3, 3, 3, 4), jnp.float64),
                  "head": jax.random.normal(keys[1], (4,), jnp.float64)}
        images = jax.random.uniform(keys[2], (2, 8, 8, 3), jnp.float64)

        def penalty(p):
            def logits_fn(x):
                h = jax.lax.conv_general_dilated(x, p["conv"], (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
                h = jnp.tanh(h - h.mean(axis=(0, 1, 2)))  # batch centring couples the samples, like BN
                return h @ p["head"], None

            return losses.r1_penalty(logits_fn, images)[0]

        direction = unit_direction(jax.random.key(4), params)
        analytic = tree_dot(jax.jit(jax.grad(penalty))(params), direction)
        numeric = directional_difference(jax.jit(penalty), params, direction, eps=1e-5)
        np.testing.assert_allclose(float(numeric), float(analytic), rtol=1e-6)


def test_feature_losses_reject_mismatched_layer_counts():
    with pytest.raises(ValueError, match="5 feature maps against 4"):
        losses.feature_matching([jnp.zeros(2)] * 5, [jnp.zeros(2)] * 4)
