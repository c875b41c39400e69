"""Big LaMa: FFC-ResNet generator with 18 blocks (50,975,875 parameters), 256x256 crops.

    python -m lama_jax.train --config configs/big_lama.py --workdir workdirs/big_lama
"""

from configs.common import lama_config


def get_config(arg=None):
    del arg
    return lama_config()
