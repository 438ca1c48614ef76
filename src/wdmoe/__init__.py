"""wdmoe: run Mixture-of-Experts language models across a base station and wireless edge devices.

Only light names are imported eagerly; `DistributedMoE` pulls in torch and transformers on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["DistributedMoE", "__version__"]

if TYPE_CHECKING:
    from wdmoe.runtime.model import DistributedMoE


def __getattr__(name: str) -> Any:
    if name == "DistributedMoE":
        from wdmoe.runtime.model import DistributedMoE

        return DistributedMoE
    raise AttributeError(f"module 'wdmoe' has no attribute {name!r}")
