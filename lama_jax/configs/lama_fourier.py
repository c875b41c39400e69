"""LaMa-Fourier: the paper's 27M-parameter model, 9 FFC residual blocks, on Places365-Standard.

The paper trains it on 3 GPUs x 10 images (global batch 30). With the
Places365-Standard train images in a folder:

    python -m lama_jax.train --config configs/lama_fourier.py --workdir workdirs/lama_fourier \
        --config.data.train_dir=/data/places365_standard/train
"""

from lama_jax.configs.common import REFERENCE_BATCH_PER_DEVICE, lama_config


def get_config(arg=None):
    del arg
    config = lama_config()
    config.model.generator.n_blocks = 9
    config.batch_size = 3 * REFERENCE_BATCH_PER_DEVICE
    config.data.update(source="folder", num_workers=8)
    return config
