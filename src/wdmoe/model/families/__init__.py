"""Model family adapters: one `Family` per supported Hugging Face MoE architecture, registered in registry.py."""

from wdmoe.model.families.base import Family
from wdmoe.model.families.registry import FAMILIES, family_for, supported_families

__all__ = ["FAMILIES", "Family", "family_for", "supported_families"]
