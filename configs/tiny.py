"""A tiny LaMa that trains on CPU in minutes on the built-in sample photos (the quickstart default).

    python -m lama_jax.train --config configs/tiny.py --workdir workdirs/tiny
"""

from configs.common import lama_config


def get_config(arg=None):
    del arg
    config = lama_config()
    config.model.generator.update(ngf=8, n_blocks=2)
    config.model.discriminator.update(ndf=8, n_layers=3)
    config.batch_size = 4
    return config
