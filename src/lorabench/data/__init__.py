"""GLUE data: the task table, readers for a GLUE folder or the hub, and tokenized loaders.

    from lorabench.data import get_task, load_glue, build_loaders
    spec = get_task("sst2")                    # TaskSpec: fields, labels, metrics, splits
    dev = load_glue("sst2", "validation")      # list[Example(text_a, text_b, label)]
    train_loader, dev_loaders = build_loaders("sst2", tokenizer, max_length=128, batch_size=32)
"""

from .batching import (
    EVAL_SUBSET_SEED,
    Collator,
    ShuffledBatches,
    TokenizedDataset,
    build_loaders,
    default_cache_dir,
    encode,
    stratified_subset,
    subset,
)
from .glue import (
    TASKS,
    Columns,
    DataError,
    Example,
    Source,
    TaskSpec,
    get_task,
    load_glue,
    read_tsv,
    resolve_source,
)

__all__ = [
    "EVAL_SUBSET_SEED",
    "TASKS",
    "Collator",
    "Columns",
    "DataError",
    "Example",
    "ShuffledBatches",
    "Source",
    "TaskSpec",
    "TokenizedDataset",
    "build_loaders",
    "default_cache_dir",
    "encode",
    "get_task",
    "load_glue",
    "read_tsv",
    "resolve_source",
    "stratified_subset",
    "subset",
]
