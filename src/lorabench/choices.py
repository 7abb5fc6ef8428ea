"""The enumerations every layer shares: one tuple each, read by the config, the flags, the
models and the 4-bit code alike."""

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
HEADS = ("cls", "lm")
POOLINGS = ("auto", "cls", "mean")
QUANT_TYPES = ("nf4", "fp4")
BACKENDS = ("local", "ray")
METRIC_FROM = ("best", "final")
TRACKERS = ("tensorboard", "mlflow", "wandb")
LOG_WITH = (*TRACKERS, "all")  # all: every installed tracker (as accelerate's log_with="all")
METRIC_NAMES = ("accuracy", "f1", "f1_macro", "mcc", "pearson", "spearman")  # metrics.METRICS, in a leaf
