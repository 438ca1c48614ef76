"""The planner's input errors: each names the field or the sizes, with units, and what to do."""

from __future__ import annotations

from wdmoe.errors import WdmoeError


class PlanError(WdmoeError):
    """No deployment exists (the model does not fit the cluster) or a plan file is invalid."""


class ClusterError(WdmoeError):
    """A cluster file or a resource status is invalid; the message names the field, the value and the unit."""


def megabytes(num_bytes: float) -> str:
    """'16,515,072 bytes (16.5 MB)': exact bytes for the record, MB for the reader."""
    return f"{num_bytes:,.0f} bytes ({num_bytes / 1e6:.3g} MB)"
