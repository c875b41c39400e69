"""Settings shared by every LaMa experiment config: the reference's losses, optimisers and data.

Each experiment file (big_lama.py, lama_fourier.py, tiny.py) starts from
`lama_config()` and changes only what differs, so a reader sees every key here.
"""

import ml_collections


def lama_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        generator=dict(ngf=64, n_downsampling=3, n_blocks=18, ratio=0.75, enable_lfu=False),
        discriminator=dict(ndf=64, n_layers=4),
    ))

    # Reference §5 (big-lama.yaml `losses:`); a zero weight skips the term entirely.
    config.losses = ml_collections.ConfigDict(dict(
        l1_weight_known=10.0,
        l1_weight_missing=0.0,
        adversarial_weight=10.0,
        r1_weight=0.001,
        mask_as_fake_target=True,
        allow_scale_mask=True,
        feature_matching_weight=100.0,
        resnet_pl_weight=30.0,
        # "batch": encoder BN on batch statistics, what the reference does while training (trap 7).
        # "running": frozen eval-mode statistics.
        resnet_pl_bn="batch",
        # Converted ADE20k encoder_epoch_20.pth (python -m lama_jax.convert --network resnet_pl).
        # None uses random weights: only for smoke tests, the loss is then meaningless.
        resnet_pl_weights=ml_collections.config_dict.placeholder(str),
    ))

    # Reference §6: Adam with PyTorch defaults, per-optimizer global-norm clipping at 1.
    config.optim = ml_collections.ConfigDict(dict(
        generator_lr=1e-3,
        discriminator_lr=1e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,
    ))

    config.train = ml_collections.ConfigDict(dict(
        # "reference": G step then D step re-running G with the updated weights (§5.3).
        # "fused": one G forward serves both steps (faster; a documented deviation).
        step_mode="reference",
        # "global": BN statistics over the global batch (synchronised);
        # "per_device": one statistic group per data shard, like PyTorch DDP without SyncBN.
        batch_norm="per_device",
        compute_dtype="float32",  # or "bfloat16": params, FFT, BN statistics and losses stay float32
    ))

    config.batch_size = 10  # global batch; the reference uses 10 per GPU
    config.total_steps = 1_000_000
    config.log_every_steps = 250
    config.checkpoint_every_steps = 5000
    config.eval_every_steps = 25_000
    config.keep_checkpoints = 3
    config.init_from = ml_collections.config_dict.placeholder(str)
    return config
