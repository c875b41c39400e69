"""A tiny LaMa that trains on CPU in a few minutes on the built-in sample photos (the quickstart).

    python -m lama_jax.train --config configs/tiny.py --workdir workdirs/tiny

64-pixel crops, 8 base channels, two FFC blocks and no perceptual loss (the
ADE20k encoder is not shipped); the masks are the training masks scaled down
by 4 to fit the crops. It shows the whole pipeline working, not a useful model.
"""

from lama_jax.configs.common import lama_config


def get_config(arg=None):
    del arg
    config = lama_config()
    config.model.generator.update(ngf=8, n_blocks=2)
    config.model.discriminator.update(ndf=8, n_layers=3)
    config.losses.update(resnet_pl_weight=0.0, resnet_pl_weights=None)
    config.batch_size = 8
    config.data.update(
        source="samples",
        crop_size=64,
        # train_mixed's sizes divided by 4 (the reference's are for 256-pixel crops).
        mask_overrides=dict(
            irregular_kwargs=dict(max_len=50, max_width=25),
            box_kwargs=dict(margin=3, bbox_min_size=8, bbox_max_size=38),
        ),
        eval_size=128,
    )
    config.total_steps = 300
    config.log_every_steps = 25
    config.checkpoint_every_steps = 100
    config.eval_every_steps = 100
    config.eval.batch_size = 6
    return config
