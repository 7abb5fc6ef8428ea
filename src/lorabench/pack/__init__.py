"""Packing: K runs over one frozen base in one process (training), many adapters in one pass (eval).

    lorabench sweep configs/quick.yaml --pack 8       # runs that share a base train 8 at a time
    lorabench eval runs/run-*-adapter --task sst2     # N saved adapters, one pass over the dev set

``plan`` decides which runs pack (what they must share, which variants can), ``layers`` holds the
packed layers (one frozen layer, each run's LoRA on its own rows by batched products), ``model``
joins K runs loaded as they would be alone, ``fit`` trains them in lockstep, ``run`` writes one
result per run, and ``python -m lorabench.pack`` is the process a sweep starts for a pack.

This package file imports nothing, so that the sweep can read ``plan`` without loading the rest.
"""
