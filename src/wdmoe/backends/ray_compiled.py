"""One Ray Compiled Graph round per MoE layer: every live device actor reads its batch from a shared-memory channel.

The graph is `InputNode -> actor_k.run_in_round(input, k) for every live device k -> MultiOutputNode`, compiled
once for a set of live devices. Each layer step writes one buffer, the round frame of `wire.encode_round` (one
part per device, empty for an idle device), and reads all the results: one round, no task submission, no
object-store round trip. One `bytes` input is written to the channel as is; one argument per device would be
pickled together at every round, and unpickled by every actor. A compiled graph has a fixed membership, so
the pool tears it down on any device failure (Ray closes every channel of a graph when one actor dies) and
compiles a new one over the devices that are live at the next step.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from wdmoe.backends.wire import encode_round


class CompiledRound:
    """A compiled graph over `actors` ({device: actor handle}); `run` does one round."""

    def __init__(self, actors: dict[int, Any]) -> None:
        from ray.dag import InputNode, MultiOutputNode

        self.devices = sorted(actors)
        with InputNode() as inp:
            dag = MultiOutputNode([actors[d].run_in_round.bind(inp, i) for i, d in enumerate(self.devices)])
        start = time.perf_counter()
        self.graph = dag.experimental_compile()
        self.compile_s = time.perf_counter() - start

    def run(self, payloads: dict[int, bytes], timeout_s: float) -> dict[int, bytes]:
        """{device: result bytes} for the devices in `payloads`; raises a Ray error if any device fails."""
        import ray

        refs = self.graph.execute(encode_round([payloads.get(d) for d in self.devices]))
        outputs = ray.get(refs, timeout=timeout_s)
        return {d: out for d, out in zip(self.devices, outputs, strict=True) if out is not None}

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a graph whose actor died has already closed its channels
            self.graph.teardown()
