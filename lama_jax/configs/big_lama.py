"""Big LaMa: FFC-ResNet generator with 18 blocks (50,975,875 parameters), 256x256 crops.

The released big-lama was trained on 8 GPUs x 15 images (global batch 120) on
Places-Challenge packed with `python -m lama_jax.data.build_tfds` (README,
"Training Big LaMa"). On 8 GPUs or TPU chips:

    python -m lama_jax.train --config configs/big_lama.py --workdir workdirs/big_lama \
        --config.data.tfds_data_dir=/data/tfds

On one GPU, keep the per-device batch of 15: add --config.batch_size=15.
Fine-tune the released model (converted with `python -m lama_jax.convert`):
add --config.init_from=checkpoints/big_lama.
"""

from lama_jax.configs.common import lama_config


def get_config(arg=None):
    del arg
    config = lama_config()
    config.batch_size = 8 * 15
    config.data.update(
        source="tfds",
        tfds_name="places_challenge",  # the --name given to lama_jax.data.build_tfds
        tfds_split="train",
        num_workers=8,
    )
    return config
