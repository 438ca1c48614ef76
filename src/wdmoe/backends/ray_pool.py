"""The Ray device pool: each device is a Ray actor on its own node; a layer step is one concurrent round.

Contract (`DevicePool`): `dispatch(batches)` sends every device its batch at once and returns the results in the
order of the batches. Batches and results travel as flat byte buffers (`wdmoe.backends.wire`). Three transports
(`TRANSPORTS`), all with the same actors; Ray places them, verifies and loads the shards, and restarts them:

- direct (default): one authenticated TCP connection per device, served by a thread of its actor (`direct`);
  every wait blocks in the kernel, and a device whose process dies is noticed at once (its connection closes);
- compiled: one Ray Compiled Graph round over shared-memory channels per layer step (`ray_compiled`);
- plain: one actor call per active device, gathered with `ray.wait`.

Failures: a device whose actor dies, or that does not answer within `call_timeout_s` plus the emulated air time
of its batch, is failed: `dispatch` raises `DeviceFailure` with the results of the devices that did answer, and
the pool stops using it. `call_timeout_s` is the detection bound; Ray reports a killed actor process sooner
(tens of ms here). `rejoin_after_s` after a failure the pool asks Ray for a new actor of that device (it waits,
without blocking the BS, until a node offering the device's resource is up); `rejoined()` returns the devices
whose new actor is ready, and they are used again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wdmoe.backends.base import TRANSPORTS, DeviceBatch, DeviceFailure, DeviceResult
from wdmoe.backends.direct import DirectError, DirectLink, direct_round
from wdmoe.backends.ray_actor import ActorInfo, DeviceActor
from wdmoe.backends.ray_cluster import NAMESPACE, RayOptions, connect, device_resource
from wdmoe.backends.ray_compiled import CompiledRound
from wdmoe.backends.wire import decode_result, encode_batch, result_size
from wdmoe.errors import DevicesUnavailable
from wdmoe.model.shards import Manifest


class DeviceStartError(DevicesUnavailable):
    """A device did not start: its node never joined, its actor died while loading, or its load hung."""


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _late_message(late: list[int], timeout_s: float) -> str:
    """Why devices `late` did not start: no live node offers their resource, or one does and the load hangs there."""
    import ray

    nodes = {device_resource(d): n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]
             for d in late if device_resource(d) in n["Resources"]}
    hung = [d for d in late if device_resource(d) in nodes]
    absent = [d for d in late if d not in hung]
    parts = []
    if hung:
        where = ", ".join(f"{d} on {nodes[device_resource(d)]}" for d in hung)
        parts.append(f"devices {where} did not finish loading within {timeout_s:.0f} s although their node is up "
                     "(the load hangs or is too slow: see the node's log, `ray logs`, or allow more time)")
    if absent:
        parts.append(f"devices {absent} did not start within {timeout_s:.0f} s: no live node offers their resource "
                     f"({device_resource(absent[0])}, ...); start each with `wdmoe device start --address HOST:PORT "
                     "--device-id K`")
    return "; ".join(parts)


class RayDevicePool:
    """D device actors, each pinned to the node that offers `wdmoe_device_K` and holding only its shard.

    Args:
        root: the split directory (devices read their shard from it, or from their node's --split-dir).
        manifest: the split's manifest; each device checks its shard's sha256 against it before loading.
        options: how to reach the cluster (default: start a local one, token authentication on).
        transport: "direct" (a socket per device), "compiled" (one Compiled Graph round per layer) or "plain" (one
            actor call per device); an attribute, so it may be switched between requests.
        emulate_air: devices wait the modeled downlink / uplink air time of each batch (`DeviceBatch.dl_s/ul_s`);
            an attribute, so it may be switched between requests.
        call_timeout_s: a device that has not answered this long after the dispatch (plus its batch's emulated
            air time) is declared failed, in seconds.
        rejoin_after_s: seconds after a failure before a new actor of that device is requested.
        ready_timeout_s: seconds to wait at start for every device's node, shard check and load.
        torch_threads: torch threads per device actor (None: torch's default).
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        options: RayOptions | None = None,
        transport: str = "direct",
        emulate_air: bool = False,
        call_timeout_s: float = 2.0,
        rejoin_after_s: float = 5.0,
        ready_timeout_s: float = 120.0,
        torch_threads: int | None = None,
    ) -> None:
        import ray

        self.num_devices = manifest.placement.num_devices
        self.root, self.manifest = root, manifest
        if transport not in TRANSPORTS:
            raise ValueError(f"transport = {transport!r} is unknown; choose one of {', '.join(TRANSPORTS)}")
        self.transport, self.emulate_air = transport, emulate_air
        self.call_timeout_s, self.rejoin_after_s = call_timeout_s, rejoin_after_s
        self.torch_threads = torch_threads
        self.owns_ray = not ray.is_initialized() and (options is None or options.address is None)
        connect(options or RayOptions(), self.num_devices)
        self.actor_class = ray.remote(DeviceActor)
        self.actors: dict[int, Any] = {}
        self.info: dict[int, ActorInfo] = {}
        self.dead_since: dict[int, float] = {}
        self.pending: dict[int, tuple[Any, Any]] = {}  # device -> (actor, ref of its load())
        self.keys: dict[int, bytes] = {}  # device -> the direct transport key its current actor was given
        self.links: dict[int, DirectLink] = {}
        self.graph: CompiledRound | None = None
        self.compile_s: list[float] = []
        self._start_all(ready_timeout_s)

    def _spawn(self, device: int) -> tuple[Any, Any]:
        actor: Any = self.actor_class.options(
            resources={device_resource(device): 1.0}, num_cpus=0, max_restarts=0, namespace=NAMESPACE
        ).remote(str(self.root), self.manifest, device, self.torch_threads)
        self.keys[device] = secrets.token_bytes(32)  # fresh per actor: a replaced actor's key opens nothing
        return actor, actor.load.remote(self.keys[device])

    def _link(self, device: int) -> None:
        """Connect to device `device`'s direct socket (the address its actor reported at load)."""
        address = self.info[device].direct_address
        if address is None:
            raise DirectError(f"device {device}'s actor opened no direct socket")
        self.links[device] = DirectLink(address, self.keys[device], device)

    def _unlink(self, device: int) -> None:
        link = self.links.pop(device, None)
        if link is not None:
            link.close()

    def _start_all(self, timeout_s: float) -> None:
        import ray

        spawned = {d: self._spawn(d) for d in range(self.num_devices)}
        refs = [ref for _, ref in spawned.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        late = [d for d, (_, ref) in spawned.items() if ref not in ready]
        if late:
            for actor, _ in spawned.values():
                ray.kill(actor, no_restart=True)
            self.close()
            raise DeviceStartError(_late_message(late, timeout_s))
        self.actors = {device: actor for device, (actor, _) in spawned.items()}
        try:
            for device, (_, ref) in spawned.items():
                try:
                    self.info[device] = ray.get(ref)  # raises the device's own error, e.g. a shard checksum mismatch
                except ray.exceptions.RayTaskError:
                    raise
                except ray.exceptions.RayError as exc:  # its process died (or its node) while it loaded
                    raise DeviceStartError(
                        f"device {device}'s actor died while loading its shard ({_first_line(exc)}); see its node's "
                        f"log (`ray logs`) and start the node again with `wdmoe device start --device-id {device}`"
                    ) from exc
                if self.transport == "direct":
                    self._link(device)  # at start, an unreachable port is an error to report, not a failure
        except Exception:
            self.close()
            raise

    # -- the DevicePool protocol -------------------------------------------------------------------------------
    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]:
        start = time.perf_counter()
        payloads = {b.device: encode_batch(b, air=self.emulate_air) for b in batches}
        air = max((b.dl_s + b.ul_s for b in batches), default=0.0) if self.emulate_air else 0.0
        timeout_s = self.call_timeout_s + air
        failed = {d: "device is not live" for d in payloads if d not in self.actors}
        live = {d: p for d, p in payloads.items() if d in self.actors}
        raw: dict[int, bytes] | dict[int, bytearray] | None = None
        if self.transport != "compiled" and self.graph is not None:
            self._drop_graph()  # switched away from compiled: its actors answer nothing else while a graph runs
        if self.transport == "direct":
            raw, lost = self._run_direct(live, timeout_s, {b.device: result_size(b) for b in batches})
            failed.update(lost)
        elif self.transport == "compiled" and live:
            raw = self._run_compiled(live, timeout_s)
        if raw is None:
            raw, lost = self._run_plain(live, timeout_s, ping_idle=self.transport == "compiled")
            failed.update(lost)
        results = [decode_result(raw[b.device]) for b in batches if b.device in raw]
        if failed:
            for device in failed:
                self._fail(device)
            raise DeviceFailure(failed, results, time.perf_counter() - start)
        return results

    def close(self) -> None:
        import ray

        if self.graph is not None:
            self.graph.close()
            self.graph = None
        for device in list(self.links):
            self._unlink(device)
        if ray.is_initialized():
            for actor in [*self.actors.values(), *(a for a, _ in self.pending.values())]:
                ray.kill(actor, no_restart=True)
        self.actors.clear()
        self.pending.clear()
        if self.owns_ray and ray.is_initialized():
            ray.shutdown()

    # -- failures and rejoin -----------------------------------------------------------------------------------
    def rejoined(self) -> frozenset[int]:
        """Devices whose replacement actor became ready since the last call (never blocks)."""
        import ray

        now = time.perf_counter()
        for device, since in list(self.dead_since.items()):
            if device not in self.pending and now - since >= self.rejoin_after_s:
                self.pending[device] = self._spawn(device)
        if not self.pending:
            return frozenset()
        ready, _ = ray.wait([ref for _, ref in self.pending.values()], num_returns=len(self.pending), timeout=0)
        back = set()
        for device, (actor, ref) in list(self.pending.items()):
            if ref not in ready:
                continue
            del self.pending[device]
            try:
                self.info[device] = ray.get(ref)
                if self.transport == "direct":
                    self._link(device)
            except (ray.exceptions.RayError, DirectError):
                ray.kill(actor, no_restart=True)
                self.dead_since[device] = time.perf_counter()  # e.g. it died again while loading; retry later
                continue
            self.actors[device] = actor
            del self.dead_since[device]
            back.add(device)
        if back:
            self._drop_graph()
        return frozenset(back)

    def _fail(self, device: int) -> None:
        import ray

        self._unlink(device)
        actor = self.actors.pop(device, None)
        if actor is not None:
            ray.kill(actor, no_restart=True)  # a device that timed out may be alive: stop it answering late
        self.dead_since.setdefault(device, time.perf_counter())
        self._drop_graph()

    def _drop_graph(self) -> None:
        if self.graph is not None:
            self.graph.close()
            self.graph = None

    # -- transports --------------------------------------------------------------------------------------------
    def _run_direct(
        self, payloads: dict[int, bytes], timeout_s: float, expected: dict[int, int]
    ) -> tuple[dict[int, bytearray], dict[int, str]]:
        """One round on the devices' sockets; a device not linked yet (the transport was switched to direct) is
        linked first, and one that cannot be reached is lost. `expected`: each answer's size in bytes."""
        lost: dict[int, str] = {}
        for device in [d for d in payloads if d not in self.links]:
            try:
                self._link(device)
            except DirectError as exc:
                lost[device] = str(exc)
        raw, gone = direct_round(self.links, {d: p for d, p in payloads.items() if d not in lost}, timeout_s,
                                 expected)
        return raw, {**lost, **gone}

    def _run_compiled(self, payloads: dict[int, bytes], timeout_s: float) -> dict[int, bytes] | None:
        """The round on the compiled graph, or None after a failure (the caller re-runs it with plain calls,
        which find out which device failed; the graph is rebuilt over the live devices at the next step)."""
        import ray

        try:
            if self.graph is None:
                self.graph = CompiledRound(self.actors)
                self.compile_s.append(self.graph.compile_s)
            return self.graph.run(payloads, timeout_s)
        except ray.exceptions.RayTaskError:
            raise  # the device's code raised: a bug to report, not a lost device
        except (ray.exceptions.RayError, TimeoutError):
            self._drop_graph()
            return None

    def _run_plain(
        self, payloads: dict[int, bytes], timeout_s: float, ping_idle: bool
    ) -> tuple[dict[int, bytes], dict[int, str]]:
        """One call per active device; with `ping_idle` (after a compiled round failed) idle devices get None, so
        that every device of the lost graph is checked."""
        import ray

        targets = self.actors if ping_idle else {d: self.actors[d] for d in payloads}
        refs = {d: actor.run.remote(payloads.get(d)) for d, actor in targets.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        done: set[Any] = set(ready)
        raw: dict[int, bytes] = {}
        lost: dict[int, str] = {}
        for device, ref in refs.items():
            if ref not in done:
                lost[device] = f"no answer within {timeout_s:.2f} s (call_timeout_s + emulated air time)"
                continue
            try:
                out = ray.get(ref)
            except ray.exceptions.RayTaskError:
                raise
            except ray.exceptions.RayError as exc:
                lost[device] = f"{type(exc).__name__}: its actor or node is gone"
                continue
            if out is not None:
                raw[device] = out
        return raw, lost

    def held(self) -> dict[int, tuple[int, int]]:
        """{device: (experts held, bytes of expert weights)} of every live device, as each reported at load (no
        call: an actor inside a compiled graph answers nothing else)."""
        return {d: (self.info[d].experts_held, self.info[d].weight_bytes) for d in self.actors if d in self.info}

    def node_of(self) -> dict[int, str]:
        """{device: Ray node id} of every live device."""
        return {d: self.info[d].node_id for d in self.actors}
