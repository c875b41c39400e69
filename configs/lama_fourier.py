"""LaMa-Fourier: the paper's 27M-parameter model, 9 FFC residual blocks.

    python -m lama_jax.train --config configs/lama_fourier.py --workdir workdirs/lama_fourier
"""

from configs.common import lama_config


def get_config(arg=None):
    del arg
    config = lama_config()
    config.model.generator.n_blocks = 9
    return config
