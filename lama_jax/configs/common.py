"""Settings shared by every LaMa experiment config: the reference's losses, optimisers and data.

Each experiment file (big_lama.py, lama_fourier.py, tiny.py) starts from
`lama_config()` and changes only what differs, so every key is defined here,
once. `python -m lama_jax.train` locks the config: a `--config.key=value`
override must name a key that exists here.

Batch semantics: `batch_size` is the *global* batch, split evenly over every
device of every host. The reference trains with 10 images per GPU under DDP
(each GPU shuffles the whole data set, BatchNorm statistics per GPU); with
`train.batch_norm = "per_device"` one device here plays one of its GPUs, so
8 devices with batch_size 80 reproduce an 8-GPU reference run.
"""

import ml_collections
from ml_collections import config_dict

# The reference's per-GPU batch (big-lama.yaml `data.batch_size`).
REFERENCE_BATCH_PER_DEVICE = 10


def data_config() -> ml_collections.ConfigDict:
    """The data section: every key `lama_jax.data.pipeline` reads, defined once, here."""
    return ml_collections.ConfigDict(dict(
        # "samples" (built-in photos) | "folder" (train_dir) | "tfds" | "synthetic" (no files).
        source="samples",
        train_dir=config_dict.placeholder(str),
        segm_dir=config_dict.placeholder(str),  # label PNGs mirroring train_dir, for segmentation masks
        tfds_name="places365_small",
        tfds_split="train",
        tfds_data_dir=config_dict.placeholder(str),
        synthetic_records=64,
        # "distortions": LaMa's training augmentations (docs/parity.md, "Data"), then a
        # crop_size crop; "plain": resize, crop and flip only.
        transform="distortions",
        crop_size=256,
        # Any lama_jax.data.masks preset; train_mixed is LaMa's: irregular strokes and boxes,
        # each with probability 1/2.
        mask="train_mixed",
        mask_overrides={},  # keyword overrides for lama_jax.data.masks.get(mask, ...)
        # Grain worker processes (0 = decode in the training process). The data iterator's
        # checkpointed state is tied to this number: keep it when resuming a run.
        num_workers=0,
        read_threads=2,  # threads per process running the per-record transform (OpenCV frees the GIL)
        max_bad_in_a_row=64,  # unreadable files in a row before the run stops
        eval_dir=config_dict.placeholder(str),  # LaMa evaluation folder; None = built-in samples
        eval_size=256,
        eval_mask="thick_256",  # preset of the built-in samples' frozen masks
        eval_seed=0,
    ))


def lama_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict(dict(
        generator=dict(ngf=64, n_downsampling=3, n_blocks=18, ratio=0.75, enable_lfu=False,
                       # How the program is built per platform (lama_jax/models/platform.py), same
                       # arithmetic either way: "auto" | "unrolled" | "scan", "auto" | "fft" | "dft".
                       block_loop="auto", fft_impl="auto",
                       # Recompute each residual block's forward in the backward pass: activation
                       # memory for one more forward of the blocks (README, "Before renting a chip").
                       remat_blocks=False),
        # stride2_input_grad: "auto" | "xla" | "phases", how TPU programs differentiate its stride-2
        # convolutions (lama_jax/models/platform.py); the same arithmetic either way.
        discriminator=dict(ndf=64, n_layers=4, stride2_input_grad="auto"),
    ))

    # LaMa's big-lama.yaml `losses:` (docs/parity.md, "Losses"); a zero weight skips the term entirely.
    config.losses = ml_collections.ConfigDict(dict(
        l1_weight_known=10.0,
        l1_weight_missing=0.0,
        adversarial_weight=10.0,
        r1_weight=0.001,
        mask_as_fake_target=True,
        allow_scale_mask=True,
        feature_matching_weight=100.0,
        resnet_pl_weight=30.0,
        # "batch": encoder BN on batch statistics, what the reference does while training (Lightning
        # puts the frozen encoder back in train mode).
        # "running": frozen eval-mode statistics.
        resnet_pl_bn="batch",
        # A model checkpoint holding the ADE20k encoder, converted from encoder_epoch_20.pth with
        # `python -m lama_jax.convert --network resnet_pl`. Needed when resnet_pl_weight > 0;
        # "random" uses random weights, which only suits speed measurements (the loss is meaningless).
        resnet_pl_weights="checkpoints/ade20k_resnet50dilated",
    ))

    # The reference's optimisers: Adam with PyTorch defaults, per-optimizer global-norm clipping at 1.
    config.optim = ml_collections.ConfigDict(dict(
        generator_lr=1e-3,
        discriminator_lr=1e-4,
        b1=0.9,
        b2=0.999,
        eps=1e-8,
        clip_norm=1.0,
    ))

    config.train = ml_collections.ConfigDict(dict(
        # "reference": G step then D step re-running G with the updated weights, as LaMa's trainer does.
        # "fused": one G forward serves both steps (faster; a documented deviation).
        step_mode="reference",
        # "global": BN statistics over the global batch (synchronised);
        # "per_device": one statistic group per data shard, like PyTorch DDP without SyncBN.
        batch_norm="per_device",
        compute_dtype="float32",  # or "bfloat16": params, FFT, BN statistics and losses stay float32
    ))

    config.data = data_config()
    config.batch_size = REFERENCE_BATCH_PER_DEVICE  # global; see the module docstring

    # Schedule (the reference's: 40 epochs of 25,000 batches, validation at every epoch end,
    # logging every 250 steps). Tooling relies on these key names.
    config.total_steps = 1_000_000
    config.log_every_steps = 250
    config.checkpoint_every_steps = 5000
    config.eval_every_steps = 25_000
    config.keep_checkpoints = 3  # newest training checkpoints kept; the best one is kept apart
    # A model checkpoint (`lama_jax.convert` / `lama_jax.export` output) whose networks
    # replace the random initialisation; ignored when the workdir already holds a checkpoint.
    config.init_from = config_dict.placeholder(str)

    # JAX's persistent compilation cache (lama_jax/compilation_cache.py): None = $JAX_COMPILATION_CACHE_DIR
    # or ~/.cache/lama_jax/jax_compilation_cache; "" turns it off; gs:// paths work on TPU VMs.
    config.compilation_cache_dir = config_dict.placeholder(str)
    # "START:STOP" (e.g. "10:15"): a jax.profiler trace of those steps into WORKDIR/profile/; "" = off.
    config.profile_steps = ""

    config.eval = ml_collections.ConfigDict(dict(
        batch_size=8,  # global; LaMa's eval2 configs use 8
        # Any of ssim, psnr, l1, lpips, fid; lpips and fid need the weights files below.
        metrics=("ssim", "psnr", "l1"),
        # The reference keeps its best checkpoint by ssim_fid100_f1 (needs fid); any total
        # metric of the report works, e.g. "ssim" or "lpips" (with best_mode "min").
        best_metric="ssim",
        best_mode="max",
        lpips_weights=config_dict.placeholder(str),
        vgg_weights=config_dict.placeholder(str),
        inception_weights=config_dict.placeholder(str),
        num_image_grids=4,  # evaluation examples drawn to TensorBoard
    ))
    return config
