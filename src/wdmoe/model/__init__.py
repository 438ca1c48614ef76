"""Hugging Face MoE families split into a base-station part and per-device expert shards (torch)."""
