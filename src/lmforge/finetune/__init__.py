"""Post-training over the one training loop: SFT, DPO and distillation objectives, LoRA."""
