"""What every training loop needs, in one place, so a scenario's own loop cannot silently drop it.

    placement   ``placement(precision)``: the device (CUDA when there is one), the autocast precision
                it resolves to and the autocast dtype; ``to_device(batch, device)``
    evaluate    ``evaluate(model, loaders, task, device, amp)``: the one evaluation of every loop (eval
                mode restored afterwards, batches on the device, autocast, ``metrics.compute``)
    guard       ``DivergenceGuard``: a NaN or exploding loss, non-finite trainable tensors or a NaN dev
                metric ends the run as "diverged" with a message saying so, never as normal metrics
    meter       ``Meter(device)``: training time without evaluation, evaluation time, examples and
                tokens per second, peak memory

``lorabench.train.fit`` is the reference loop; ``mixtures.loop`` and ``transfer.loop`` are built from
these parts. Only low-level modules are imported here (measure, precision, divergence, metrics).
"""
