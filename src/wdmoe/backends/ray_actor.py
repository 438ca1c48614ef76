"""The device side of the Ray backend: one actor per device, an `ExpertWorker` behind a bytes-in, bytes-out call.

The actor reads its own shard from the split directory on its node and verifies its sha256 against the manifest
the BS sent before loading it (`ExpertWorker`). It speaks only the flat `wdmoe.backends.wire` format. With
emulated radio, it makes the radio model's air time real: it waits the downlink time before computing and the
uplink time after, so the BS's wall clock includes the modeled wireless link. The actor waits whatever air time
its batch carries; the pool sends zeros unless it emulates the radio.

With the direct transport (`wdmoe.backends.direct`, the pool's default) `load` also opens the device's own
authenticated socket on its node, and a thread of the actor answers the BS's batches there; Ray's calls remain for
loading, the other transports and failure handling.

The split directory is the BS's path unless the node was started with `wdmoe device start --split-dir DIR`,
which sets WDMOE_SPLIT_DIR for the node's processes (only the device's own shard has to be there).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wdmoe.model.shards import Manifest

SPLIT_DIR_ENV = "WDMOE_SPLIT_DIR"


@dataclass(frozen=True)
class ActorInfo:
    """Where a device actor runs and what it loaded."""

    device: int
    node_id: str
    hostname: str
    pid: int
    experts_held: int
    split_dir: str
    weight_bytes: int = 0  # bytes of expert weights loaded (wdmoe.plan.reports reads it)
    direct_address: tuple[str, int] | None = None  # the direct transport's (host, port), if it was asked for


class DeviceActor:
    """A device's experts. Decorated with `ray.remote` by the pool (this module does not import ray)."""

    def __init__(self, root: str, manifest: Manifest, device: int, torch_threads: int | None = None) -> None:
        self.root = Path(os.environ.get(SPLIT_DIR_ENV) or root)  # the node's own copy wins (see module doc)
        self.manifest = manifest
        self.device = device
        self.torch_threads = torch_threads
        self.worker: Any = None
        self.server: Any = None

    def load(self, direct_key: bytes | None = None) -> ActorInfo:
        """Verify and load the shard (a method, not the constructor, so that a ShardError reaches the BS typed);
        with `direct_key`, then open the direct transport's socket, which only a holder of that key may use."""
        import ray

        from wdmoe.backends.worker import ExpertWorker

        self._set_threads()
        self.worker = ExpertWorker(self.root, self.manifest, self.device)
        if direct_key is not None:
            from wdmoe.backends.direct import DIRECT_PORTS_ENV, DirectServer, parse_ports

            spec = os.environ.get(DIRECT_PORTS_ENV)
            self.server = DirectServer(
                self.run, direct_key, self.device, ray.util.get_node_ip_address(),
                ports=parse_ports(spec, DIRECT_PORTS_ENV) if spec else None, on_thread_start=self._set_threads,
            )
        return ActorInfo(
            self.device, ray.get_runtime_context().get_node_id(), socket.gethostname(), os.getpid(),
            self.worker.num_experts_held, str(self.root), self.worker.weight_bytes,
            None if self.server is None else self.server.address,
        )

    def refused_connections(self) -> int:
        """Connections to this device's direct socket that failed the handshake (0 without the direct transport)."""
        return 0 if self.server is None else int(self.server.refused)

    def _set_threads(self) -> None:
        if self.torch_threads is not None:
            import torch

            torch.set_num_threads(self.torch_threads)

    def run_in_round(self, frame: bytes, index: int) -> bytes | None:
        """This device's batch of a compiled-graph round: part `index` of the round's one buffer (`wire.round_part`;
        an empty part, None out: the device is idle in this round)."""
        from wdmoe.backends.wire import round_part

        return self.run(round_part(frame, index))

    def run(self, payload: bytes | bytearray | memoryview | None) -> bytes | None:
        """One batch in, one result out (None in, None out: this device is idle in a compiled-graph round)."""
        if payload is None:
            return None
        import torch

        from wdmoe.backends.base import DeviceResult
        from wdmoe.backends.wire import decode_batch, encode_result

        batch = decode_batch(payload)
        if batch.device != self.device:
            raise ValueError(f"batch for device {batch.device} reached device {self.device}")
        air_s = 0.0
        if batch.dl_s > 0.0:
            time.sleep(batch.dl_s)
            air_s += batch.dl_s
        with torch.inference_mode():
            result = self.worker.run(batch)
        if batch.ul_s > 0.0:
            time.sleep(batch.ul_s)
            air_s += batch.ul_s
        return encode_result(DeviceResult(result.device, result.output, result.compute_s, air_s))
