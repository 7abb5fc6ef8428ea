"""The names of PEFT's on-disk adapter format, shared by ``peft_export`` (write) and ``peft_import``
(read); a leaf, so reading a PEFT folder does not pull in the exporter."""

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel -> tuner (LoraModel ...) -> the transformers model
