"""Segmentation tasks: not GLUE and not text (``kind: segment``; ``--data-dir`` is an image/mask folder
read by ``lorabench.segmentation.data``; Dice per image is the primary metric).

``data.glue.get_task`` asks here after the GLUE table, handing over its ``TaskSpec`` class (this
module stays a floor below ``glue``, as ``taskfile`` does)."""

from __future__ import annotations

import functools
from typing import Any

#: name -> what the task's TaskSpec holds beside its name
IMAGE_TASKS: dict[str, dict[str, Any]] = {
    "membrane": {"display": "membrane", "label_names": ("membrane",), "metrics": ("dice", "iou"),
                 "primary_metric": "dice", "files": {"train": "image", "test": "label"}, "dev_splits": ("test",),
                 "sizes": (20, 10)},
}


@functools.cache
def image_task(name: str, spec_cls: type) -> Any | None:
    """The TaskSpec (one object per name) of the segmentation task ``name``; None for any other name."""
    if name not in IMAGE_TASKS:
        return None
    return spec_cls(name=name, text_fields=(), is_regression=False, num_labels=1, glue_dir=name, hub_config=name,
                    modality="image", **IMAGE_TASKS[name])
