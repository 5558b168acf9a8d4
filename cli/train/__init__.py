"""LoRA training: gradients (C core), data, optimizer, checkpoints."""
