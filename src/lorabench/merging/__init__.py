"""Multi-task merging: N LoRA-form adapters of one base (one per GLUE task) into one.

    from lorabench.merging import merge_adapters, write_merged
    merged = merge_adapters(["runs/run-a-adapter", "runs/run-b-adapter"], "ties", density=0.2)
    write_merged(merged, "merged/")      # merged/<task>/: the shared merged update + that task's own head

One method per file, registered where it is defined (``registry.register``), as variants are:
``linear``, ``concat``, ``ties``, ``dare``, ``lego``. ``lorabench merge`` (``commands/merge.py``)
(importing ``merging.merge``, ``merging.write`` and ``merging.registry``, not this package face, to
stay low in the import floors) runs a merge and evaluates every task under it, beside the task's own adapter and the no-adapter
lower bound.
"""

from __future__ import annotations

from .merge import Merged, Source, compute, merge_adapters, mergeable_variants, plan_merge, read_source
from .write import check_out, write_adapter, write_merged
from .registry import Method, get, names, register

__all__ = ["Merged", "Method", "Source", "check_out", "compute", "get", "mergeable_variants", "merge_adapters", "names",
           "plan_merge", "read_source", "register", "write_adapter", "write_merged"]
