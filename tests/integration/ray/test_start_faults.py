"""A device whose node hangs while the pool starts is named, with the cause, within the start timeout."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.integration.ray.conftest import DeviceCluster
from wdmoe.backends.factory import make_pool
from wdmoe.backends.ray_pool import DeviceStartError
from wdmoe.model.shards import Manifest


def raylet_of(device: int) -> int:
    """The pid of the raylet that offers device `device`'s resource (however its node was started)."""
    resource = f"wdmoe_device_{device}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"raylet") and any(resource.encode() in a for a in args):
            return int(cmdline.parent.name)
    raise LookupError(f"no raylet offers {resource}")


def test_a_device_whose_node_hangs_during_the_start_is_named_as_hung_not_as_absent(
    ray_cluster: DeviceCluster, mixtral_split: Path
) -> None:
    raylet = raylet_of(1)
    os.kill(raylet, signal.SIGSTOP)  # the node is up (Ray still lists it) but does nothing
    try:
        start = time.monotonic()
        with pytest.raises(DeviceStartError) as refused:
            make_pool("ray", mixtral_split, Manifest.read(mixtral_split), address=ray_cluster.address,
                      ready_timeout_s=4.0, torch_threads=1)
        took = time.monotonic() - start
    finally:
        os.kill(raylet, signal.SIGCONT)
    message = str(refused.value)  # (on a busy machine the others may also take over 4 s to start: listed too)
    assert re.search(r"\b1 on ", message) and "did not finish loading within 4 s although their node is up" in message
    assert "no live node offers" not in message  # the old message sent the user after a node that is there
    assert took < 60.0
