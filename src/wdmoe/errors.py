"""The errors wdmoe raises on bad input. Each message names the thing, the value, and what to do."""

from __future__ import annotations


class WdmoeError(ValueError):
    """Base of every input error wdmoe raises on purpose (a ValueError, so callers may catch either)."""


class UnsupportedModelError(WdmoeError):
    """The model is not one of the supported MoE families, or it has no routed experts."""


class ShardError(WdmoeError):
    """A split directory is incomplete or corrupt: a missing file, a checksum mismatch, a bad manifest."""


class PlacementError(WdmoeError):
    """A placement of experts on devices is invalid (an expert on no device, an unknown device id, ...)."""


class DevicesUnavailable(RuntimeError):
    """The devices cannot run the model now: every device lost, a device that died or hung while starting, a cluster
    out of reach. Not an input error: the same request may succeed later, once the devices are back (the server
    answers 503, retryable; the CLI prints one line and exits with status 3)."""
