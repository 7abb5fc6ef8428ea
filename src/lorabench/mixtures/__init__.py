"""Mixtures of LoRA experts on multi-task GLUE runs (``lorabench mixture``).

One shared encoder with a head per task (``multitask``), batches of the tasks interleaved
(``interleave``), and three ways to adapt the encoder: one LoRA shared by all tasks (lorabench's
``lora`` variant), or E LoRA experts per attention projection (``experts.MixtureLoRA``) chosen per
token by a router from the registry (``registry``): ``lora_mixer`` (LoRA-Mixer, arXiv 2507.00029)
and ``remix`` (ReMix, arXiv 2603.10160). Importing the package registers every router.
"""

from . import lora_mixer, remix  # noqa: F401  (register the routers)
from .registry import get, names  # noqa: F401
