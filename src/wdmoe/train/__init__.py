"""Training the model wdmoe ships: corpus (data) -> tokenizer -> MoE training loop (see docs/training.md)."""
