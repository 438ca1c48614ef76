"""A cell of many users: their requests arrive over modeled time and run through continuous batching, as on the
live server, every step's latency from the radio model.

    requests = poisson_arrivals(rng, trace, users=16, rate_per_s=2.0, per_user=4)   # or closed_loop(...)
    run = run_cell(requests, radio_step(trace, make_decider(trace, scenario, policy)), max_batch=64)

Contract (what makes a simulated cell the server's, tests/unit/sim/test_cell.py checks it against the runtime):
- admission and retirement are `wdmoe.runtime.admission.Slots`, the live scheduler's own rule: before each step
  the requests that have arrived (arrival_s <= the clock) join the queue in arrival order and are admitted while
  fewer than `max_batch` run; a request retires after the step that produced its last token;
- a step holds the next step of every running request (its prompt rows at prefill, one row at decode) laid end to
  end in batch order, as `DistributedMoE.step_segments` does; the policy decides every MoE layer over all of them
  (the band shared over the batch) through the runtime's `WirelessDecider`, whose channel the step derives from
  the oldest running request's channel seed and token count (`WirelessDecider.seed_step`, as the scheduler does);
- the modeled clock advances by each step's latency (`radio.latency.step_totals` of its layers); a request's part
  of a step is `radio.latency.step_share` (the whole latency, energy and bits in proportion to its tokens) and its
  TTFT/TPOT `radio.latency.request_latency` of its parts, as the live telemetry (`request_summary`) attributes them;
- on top, what the live telemetry cannot see: the queueing. `ttft_s` runs from arrival to the end of the prefill
  step, `queue_s` from arrival to admission, `e2e_s` from arrival to the last token. When the cell is idle the
  clock jumps to the next arrival.
A request replays one request of the trace: its prompt length, output length and router choices.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from wdmoe.radio.latency import StepLatency, request_latency, step_share, step_totals
from wdmoe.runtime.admission import Slots
from wdmoe.runtime.wireless import WirelessDecider
from wdmoe.sim.trace import Trace


@dataclass(eq=False)
class CellRequest:
    """One user's request while the cell runs: trace request `request`, arriving at `arrival_s` (modeled s)."""

    user: int
    request: int
    arrival_s: float
    channel_seed: int
    steps: np.ndarray  # (n,) its trace steps, the prefill first
    step_tokens: np.ndarray  # (n,) tokens of each
    cancelled: bool = False
    finish_reason: str | None = None
    produced: int = 0  # tokens produced so far (one per step)
    start_s: float | None = None
    first_token_s: float | None = None
    done_s: float | None = None
    parts: list[StepLatency] = field(default_factory=list)  # its share of each step it ran in

    @property
    def max_tokens(self) -> int:
        return int(self.steps.shape[0])

    @property
    def started(self) -> bool:
        return self.produced > 0


def trace_request(trace: Trace, request: int, user: int, arrival_s: float, channel_seed: int) -> CellRequest:
    """A request of `user` that replays request number `request` of the trace."""
    steps = np.flatnonzero(trace.step_request == request)
    if steps.size == 0:
        raise ValueError(f"request {request} is not in the trace; it holds {trace.num_requests} requests")
    return CellRequest(user, request, arrival_s, channel_seed, steps, trace.step_tokens[steps])


StepFn = Callable[[Sequence[CellRequest]], StepLatency]
FollowUp = Callable[[CellRequest], CellRequest | None]


def radio_step(trace: Trace, decider: WirelessDecider) -> StepFn:
    """One batched forward step through the runtime's decider (module docstring): the step's latency, energy, bits."""
    layers = trace.layers.tolist()

    def step(batch: Sequence[CellRequest]) -> StepLatency:
        oldest = batch[0]
        decider.seed_step(oldest.channel_seed, oldest.produced)
        decider.start_step()
        rows = [[trace.rows(int(r.steps[r.produced]), pos) for r in batch] for pos in range(len(layers))]
        modeled = []
        for pos, layer in enumerate(layers):
            index = np.concatenate([trace.topk_index[s] for s in rows[pos]])  # (T, k), batch order
            weight = np.concatenate([trace.topk_weight[s] for s in rows[pos]])
            logits = np.concatenate([trace.logits[s] for s in rows[pos]]) if trace.logits is not None else None
            modeled.append(decider(layer, index, weight, logits).modeled)
        return step_totals(modeled)

    return step


@dataclass(frozen=True)
class RequestResult:
    """One request of a simulated cell; times in modeled seconds from the start of the run.

    ttft_s: arrival -> first token (queueing included). queue_s: arrival -> admission. prefill_s: the prefill step
    (the live telemetry's modeled TTFT). tpot_s: the mean decode step (nan for one token). e2e_s: arrival -> last
    token. energy_j, bytes_on_air: its shares of the steps it ran in.
    """

    user: int
    request: int
    arrival_s: float
    ttft_s: float
    queue_s: float
    prefill_s: float
    tpot_s: float
    e2e_s: float
    tokens: int
    energy_j: float
    bytes_on_air: float


@dataclass(frozen=True)
class CellRun:
    """A finished cell: its requests in arrival order, steps run, the batch size of each, the modeled makespan."""

    requests: tuple[RequestResult, ...]
    steps: int
    batch_sizes: np.ndarray
    makespan_s: float


def run_cell(requests: Sequence[CellRequest], step: StepFn, max_batch: int = 64, follow_up: FollowUp | None = None,
             on_step: Callable[[int], None] | None = None, prefill_first: bool = False) -> CellRun:
    """Run the requests to completion (module docstring). `follow_up(done)` may return a request that arrives
    when `done` finishes (closed loop); `on_step(n)` is told the n tokens each step produced; `prefill_first`:
    the step rule of `wdmoe.runtime.admission.Slots` (the serving engine's)."""
    slots: Slots[CellRequest] = Slots(max_batch, prefill_first)
    order = iter(range(1 << 62))  # ties in arrival time keep the order given
    pending = [(r.arrival_s, next(order), r) for r in requests]
    heapq.heapify(pending)
    finished: list[CellRequest] = []
    clock, sizes = 0.0, []
    while pending or slots.waiting or slots.running:
        while pending and pending[0][0] <= clock:
            slots.add(heapq.heappop(pending)[2])
        slots.admit()  # a trace request has >= 1 step and nothing is cancelled: nothing retires here
        if not slots.running:
            clock = max(clock, pending[0][0])
            continue
        batch = slots.batch()
        for r in batch:
            if r.start_s is None:
                r.start_s = clock
        lat = step(batch)
        clock += lat.latency_s
        sizes.append(len(batch))
        widths = [int(r.step_tokens[r.produced]) for r in batch]
        total = sum(widths)
        for r, width in zip(batch, widths, strict=True):
            r.parts.append(step_share(lat, width / total))
            r.produced += 1
            if r.first_token_s is None:
                r.first_token_s = clock
            if r.produced >= r.max_tokens:
                r.finish_reason = "length"
        for r in slots.take_done():
            r.done_s = clock
            finished.append(r)
            nxt = follow_up(r) if follow_up is not None else None
            if nxt is not None:
                heapq.heappush(pending, (nxt.arrival_s, next(order), nxt))
        if on_step is not None:
            on_step(len(batch))
    finished.sort(key=lambda r: r.arrival_s)
    return CellRun(tuple(result(r) for r in finished), len(sizes), np.array(sizes, dtype=np.int64), clock)


def result(r: CellRequest) -> RequestResult:
    """A finished request's times (module docstring), its parts through `radio.latency.request_latency`."""
    assert r.start_s is not None and r.first_token_s is not None and r.done_s is not None
    latency = request_latency(r.parts[0], r.parts[1:])
    bits = sum(p.bits_dl + p.bits_ul for p in r.parts)
    return RequestResult(r.user, r.request, r.arrival_s, r.first_token_s - r.arrival_s, r.start_s - r.arrival_s,
                         latency.ttft_s, latency.tpot_s, r.done_s - r.arrival_s, r.produced, latency.energy_j,
                         bits / 8)


def _seeds(rng: np.random.Generator, n: int) -> list[int]:
    return [int(s) for s in rng.integers(0, 2**63 - 1, size=n)]


def poisson_arrivals(rng: np.random.Generator, trace: Trace, users: int, rate_per_s: float,
                     per_user: int) -> list[CellRequest]:
    """Each user sends `per_user` requests as a Poisson process of `rate_per_s` requests per second (exponential
    gaps, the first from 0); user u's j-th request replays trace request (u * per_user + j) mod R."""
    if users < 1 or per_user < 1 or not rate_per_s > 0:
        raise ValueError(f"users = {users}, requests per user = {per_user}, rate = {rate_per_s}/s: each must be > 0")
    gaps = rng.exponential(1.0 / rate_per_s, size=(users, per_user))
    times = np.cumsum(gaps, axis=1)
    seeds = _seeds(rng, users * per_user)
    return [trace_request(trace, (u * per_user + j) % trace.num_requests, u, float(times[u, j]),
                          seeds[u * per_user + j]) for u in range(users) for j in range(per_user)]


def closed_loop(rng: np.random.Generator, trace: Trace, users: int,
                per_user: int) -> tuple[list[CellRequest], FollowUp]:
    """Each user sends its first request at 0 and the next one when the previous finishes (no think time), up to
    `per_user`; request numbering as `poisson_arrivals`. Returns the first requests and the `follow_up`."""
    if users < 1 or per_user < 1:
        raise ValueError(f"users = {users}, requests per user = {per_user}: each must be > 0")
    seeds = _seeds(rng, users * per_user)
    sent = dict.fromkeys(range(users), 1)

    def make(u: int, j: int, at: float) -> CellRequest:
        return trace_request(trace, (u * per_user + j) % trace.num_requests, u, at, seeds[u * per_user + j])

    def follow_up(done: CellRequest) -> CellRequest | None:
        j = sent[done.user]
        if j >= per_user:
            return None
        sent[done.user] = j + 1
        assert done.done_s is not None
        return make(done.user, j, done.done_s)

    return [make(u, 0, 0.0) for u in range(users)], follow_up


@dataclass(frozen=True)
class Poisson:
    """Each user sends requests as a Poisson process of `rate_per_s` requests per second (`poisson_arrivals`)."""

    rate_per_s: float

    def describe(self) -> dict[str, object]:
        return {"process": "poisson", "rate_per_s_per_user": self.rate_per_s}

    def requests(self, rng: np.random.Generator, trace: Trace, users: int,
                 per_user: int) -> tuple[list[CellRequest], FollowUp | None]:
        return poisson_arrivals(rng, trace, users, self.rate_per_s, per_user), None


@dataclass(frozen=True)
class Closed:
    """Each user sends its next request when the previous one finishes (`closed_loop`)."""

    def describe(self) -> dict[str, object]:
        return {"process": "closed"}

    def requests(self, rng: np.random.Generator, trace: Trace, users: int,
                 per_user: int) -> tuple[list[CellRequest], FollowUp | None]:
        return closed_loop(rng, trace, users, per_user)


Arrival = Poisson | Closed


def cell_tokens(trace: Trace, users: int, per_user: int) -> int:
    """Tokens a cell of `users` x `per_user` requests generates (one per step of each replayed trace request)."""
    per_request = np.bincount(trace.step_request, minlength=trace.num_requests)
    return int(sum(per_request[(u * per_user + j) % trace.num_requests] for u in range(users)
                   for j in range(per_user)))
