"""Model family adapters: the router semantics of registered Hugging Face MoE families (registry.py)."""

from wdmoe.model.families.base import Family
from wdmoe.model.families.registry import FAMILIES, REFUSED, family_for, supported_families

__all__ = ["FAMILIES", "REFUSED", "Family", "family_for", "supported_families"]
