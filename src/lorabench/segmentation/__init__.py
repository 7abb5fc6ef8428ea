"""Segmentation: a U-Net transferred from a synthetic source to image/mask folders (kind ``segment``).

    unet       ``UNet(UNetShape(base, depth))``: Ronneberger et al. 2015 (arXiv 1505.04597), padded,
               GroupNorm, every layer an ``nn.Conv2d`` (adapter targets: ``conv_names``)
    data       ``read_folder``: image/ + label/ PNGs paired by name, checked (pairs, sizes, binary
               masks, SHA256SUMS); ``split`` by position blocks; random training ``patches``
    metrics    Dice and IoU per image, averaged (empty masks defined); the soft Dice loss
    synthetic  ``membranes``: the source task, Voronoi cells with dark membranes and exact masks
    source     the source-pretrained U-Net, cached as safetensors by its settings
    loop       the training loop (built from ``lorabench.training``) and whole-image evaluation
    settings   ``SegmentSettings``: the arm (scratch, full, decoder, or an adapter variant), rank, ...
    recipe     the ``segment`` kind's recipe: one arm, filled into the result envelope

Nothing here is imported by ``lorabench/__init__``: ``run`` loads the recipe; the config layer
reads ``settings`` (and ``data`` for the default folder) when a run is of kind ``segment``.
"""
