"""Host-side data: sources, LaMa's augmentations and mask generators, the Grain pipeline.

Modules: ``masks`` (hole-mask generators and presets), ``augment`` (image
transforms), ``images`` (robust decoding), ``sources`` (random-access sources),
``samples`` (built-in photos), ``pipeline`` (training iterator and evaluation
batches), ``gen_masks`` and ``build_tfds`` (command-line tools).
"""
