"""Inter-server deployment, step 2: local search over moves and exchanges across layers (memory is shared by layers).

Contract: `local_search(model, capacity_bytes, primary, max_steps)` returns primaries (L, E) no worse than
`primary` under `model.token_s`, each device's bytes within its capacity if `primary`'s were, and from which no
single step below improves (unless `max_steps` ran out). A step is the best of

    move:      one expert to another device with room for it;
    swap:      two experts on different devices exchange devices (same layer or two layers), when each device
               has room for the other's expert once its own leaves;
    pair move: two experts of one layer onto one device (the top-k of a token pays for every active device, so
               moving either alone can add a device and look worse);
    chain:     expert i onto the device of expert j (of another layer), j on to a third device with room;
    exchange:  expert i trades places with two experts j, k of one other device (1-for-2, when sizes differ);
               at most two of the three in one layer; only up to MAX_EXCHANGE_ITEMS experts (it scans N^3).

A layer's cost depends only on its own row, so the search keeps, for every layer l, the tables
moved[l][e, d] (its cost with expert e on device d), swapped[l][e, f] (e and f exchanged) and paired[l][(e, f), d]
(both on d), and recomputes them only for the layers a step changed. Every other step's change is read from them
(numpy over all items): a step that touches two layers changes each by its own table's entry. Measured against
the exact solver in docs/planner.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel

_TOL = 1e-12  # relative: an improvement smaller than this is rounding, not progress


def _moved(model: LatencyModel, layer: int, row: np.ndarray) -> np.ndarray:
    """(E, D) the layer's cost with expert e on device d, the rest as `row`."""
    out = np.empty((row.shape[0], model.num_devices))
    for e in range(row.shape[0]):
        for d in range(model.num_devices):
            trial = row.copy()
            trial[e] = d
            out[e, d] = model.layer_s(layer, trial)
    return out


def _swapped(model: LatencyModel, layer: int, row: np.ndarray) -> np.ndarray:
    """(E, E) the layer's cost with experts e and f exchanged (inf where they share a device)."""
    num = row.shape[0]
    out = np.full((num, num), np.inf)
    for e in range(num):
        for f in range(e + 1, num):
            if row[e] != row[f]:
                trial = row.copy()
                trial[e], trial[f] = row[f], row[e]
                out[e, f] = out[f, e] = model.layer_s(layer, trial)
    return out


def _paired(model: LatencyModel, layer: int, row: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(P, D) the layer's cost with both experts of pair p on device d: the top-k of a token pays for every
    active device, so two experts may only pay off together (moving either alone adds a device)."""
    out = np.empty((pairs.shape[0], model.num_devices))
    for p, (e, f) in enumerate(pairs.tolist()):
        for d in range(model.num_devices):
            trial = row.copy()
            trial[e] = trial[f] = d
            out[p, d] = model.layer_s(layer, trial)
    return out


@dataclass
class _Tables:
    """The search's cost tables (module docstring), for the current primaries; rows of changed layers refreshed."""

    cost: np.ndarray  # (L,) each layer's expected seconds
    moved: np.ndarray  # (L, E, D)
    swapped: list[np.ndarray]  # L x (E, E)
    paired: np.ndarray  # (L, P, D)

    def refresh(self, model: LatencyModel, primary: np.ndarray, layer: int, pairs: np.ndarray) -> None:
        self.cost[layer] = model.layer_s(layer, primary[layer])
        self.moved[layer] = _moved(model, layer, primary[layer])
        self.swapped[layer] = _swapped(model, layer, primary[layer])
        self.paired[layer] = _paired(model, layer, primary[layer], pairs)


@dataclass(frozen=True)
class _Step:
    """An improving step: its change of the objective (s) and the (item, new device) assignments it makes."""

    delta_s: float
    assign: tuple[tuple[int, int], ...]


_NONE = _Step(np.inf, ())
MAX_EXCHANGE_ITEMS = 128  # 1-for-2 exchanges scan N^3 triples: only up to this many (layer, expert) items


def _argmin(values: np.ndarray) -> tuple[float, tuple[int, ...]]:
    if values.size == 0:
        return np.inf, ()
    flat = int(np.argmin(values))
    return float(values.ravel()[flat]), tuple(int(v) for v in np.unravel_index(flat, values.shape))


def _steps(t: _Tables, dev: np.ndarray, size: np.ndarray, room: np.ndarray, layer_of: np.ndarray,
           pairs: np.ndarray) -> list[_Step]:
    """The best step of each kind (module docstring), layers' costs read from the tables."""
    num_devices = room.size
    num_layers, num_experts = t.cost.size, dev.size // t.cost.size
    devices = np.arange(num_devices)
    same_layer = layer_of[:, None] == layer_of[None, :]
    apart = dev[:, None] != dev[None, :]
    gain = t.moved.reshape(-1, num_devices) - t.cost[layer_of][:, None]  # (N, D): a move's change
    out = []
    # move: item i to device d with room
    value, (i, d) = _argmin(np.where((room[None, :] >= size[:, None]) & (devices[None, :] != dev[:, None]),
                                     gain, np.inf))
    out.append(_Step(value, ((i, d),)))
    # swap: i and j exchange devices (each device has room for the other's item once its own left)
    fits = (room[dev][None, :] + size[None, :] >= size[:, None]) & (room[dev][:, None] + size[:, None]
                                                                    >= size[None, :]) & apart
    cross = gain[:, dev]  # (N, N): item i onto item j's device
    within = np.full(cross.shape, np.inf)
    for layer in range(num_layers):
        span = slice(layer * num_experts, (layer + 1) * num_experts)
        within[span, span] = t.swapped[layer] - t.cost[layer]
    value, (i, j) = _argmin(np.where(fits, np.where(same_layer, within, cross + cross.T), np.inf))
    out.append(_Step(value, ((i, int(dev[j])), (j, int(dev[i])))))
    # pair move: two experts of one layer onto one device
    rows = dev.reshape(num_layers, num_experts)
    flat = size.reshape(num_layers, num_experts)
    need = (np.where(rows[:, pairs[:, 0], None] != devices, flat[:, pairs[:, 0], None], 0)
            + np.where(rows[:, pairs[:, 1], None] != devices, flat[:, pairs[:, 1], None], 0))  # (L, P, D)
    value, at = _argmin(np.where((room >= need) & (need > 0), t.paired - t.cost[:, None, None], np.inf))
    if at:
        layer, p, d = at
        out.append(_Step(value, tuple((layer * num_experts + int(e), d) for e in pairs[p])))
    # chain (layers apart): i onto j's device, j on to device c (N, N, D) [i, j, c]
    onto = room[dev][None, :] + size[None, :] >= size[:, None]
    room_c = room[None, :] + np.where(devices[None, :] == dev[:, None], size[:, None], 0)  # [i, c]
    chain = np.where(onto[:, :, None] & (room_c[:, None, :] >= size[None, :, None]) & (apart & ~same_layer)[:, :, None]
                     & (devices[None, None, :] != dev[None, :, None]), cross[:, :, None] + gain[None, :, :], np.inf)
    value, at = _argmin(chain)
    if at:
        i, j, c = at
        out.append(_Step(value, ((i, int(dev[j])), (j, c))))
    if dev.size <= MAX_EXCHANGE_ITEMS:
        out.append(_exchange(t, dev, size, room, layer_of, gain, within, pairs))
    return out


def _exchange(t: _Tables, dev: np.ndarray, size: np.ndarray, room: np.ndarray, layer_of: np.ndarray,
              gain: np.ndarray, within: np.ndarray, pairs: np.ndarray) -> _Step:
    """1-for-2 exchange: item i (device a) trades places with items j < k (both on device b). Costed from the
    tables when at most two of the three share a layer: j and k by the pair table, i and j (or k) by the swap
    table; three of one layer are left out."""
    num_experts = dev.size // t.cost.size
    pair_index = np.full((num_experts, num_experts), -1, dtype=np.int64)
    pair_index[pairs[:, 0], pairs[:, 1]] = np.arange(pairs.shape[0])
    expert = np.arange(dev.size) % num_experts
    same = layer_of[:, None] == layer_of[None, :]
    # two (N, N, D): both of j, k onto device d
    together = gain[:, None, :] + gain[None, :, :]
    p = pair_index[np.minimum(expert[:, None], expert[None, :]), np.maximum(expert[:, None], expert[None, :])]
    joint = t.paired[layer_of[:, None], np.maximum(p, 0)] - t.cost[layer_of][:, None, None]
    two = np.where(same[:, :, None], joint, together)  # [j, k, d]
    # delta[i, j, k] = gain[i, dev[j]] + two[j, k, dev[i]]
    onto_a = gain[:, dev].T  # [i, k]: item k onto i's device
    delta = np.where(same[:, :, None], within[:, :, None] + onto_a[:, None, :],  # i, j of one layer
                     np.where(same[:, None, :], within[:, None, :] + onto_a[:, :, None],  # i, k of one layer
                              gain[:, dev][:, :, None] + np.transpose(two[:, :, dev], (2, 0, 1))))
    both = (dev[:, None] == dev[None, :]) & (np.arange(dev.size)[:, None] < np.arange(dev.size)[None, :])  # [j, k]
    other = dev[:, None] != dev[None, :]  # [i, j]
    pair_bytes = size[:, None] + size[None, :]
    three = same[:, :, None] & same[:, None, :]
    ok = (both[None, :, :] & other[:, :, None] & ~three
          & (room[dev][:, None, None] + size[:, None, None] >= pair_bytes[None, :, :])
          & (room[dev][None, :, None] + pair_bytes[None, :, :] >= size[:, None, None]))
    value, at = _argmin(np.where(ok, delta, np.inf))
    if not at:
        return _NONE
    i, j, k = at
    return _Step(value, ((i, int(dev[j])), (j, int(dev[i])), (k, int(dev[i]))))


def local_search(
    model: LatencyModel, capacity_bytes: np.ndarray, primary: np.ndarray, max_steps: int = 1000
) -> np.ndarray:
    """Best-improvement local search from `primary` (module docstring)."""
    primary = np.array(primary, dtype=np.int64)
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    num_layers, num_experts = primary.shape
    size = model.expert_bytes.ravel().astype(np.int64)  # (N,), N = L * E items, item i = (i // E, i % E)
    layer_of = np.repeat(np.arange(num_layers), num_experts)
    pairs = np.array([(e, f) for e in range(num_experts) for f in range(e + 1, num_experts)],
                     dtype=np.int64).reshape(-1, 2)
    tables = _Tables(
        np.array([model.layer_s(layer, primary[layer]) for layer in range(num_layers)]),
        np.stack([_moved(model, layer, primary[layer]) for layer in range(num_layers)]),
        [_swapped(model, layer, primary[layer]) for layer in range(num_layers)],
        np.stack([_paired(model, layer, primary[layer], pairs) for layer in range(num_layers)]),
    )
    for _ in range(max_steps):
        dev = primary.ravel().copy()
        room = capacity - np.bincount(dev, weights=size, minlength=model.num_devices).astype(np.int64)
        step = min(_steps(tables, dev, size, room, layer_of, pairs), key=lambda s: s.delta_s)
        if not step.delta_s < -_TOL * float(tables.cost.sum()):
            break
        for item, device in step.assign:
            primary[divmod(item, num_experts)] = device
        for layer in {item // num_experts for item, _ in step.assign}:
            tables.refresh(model, primary, layer, pairs)
    return primary


def _kick(primary: np.ndarray, sizes: np.ndarray, capacity: np.ndarray, rng: np.random.Generator,
          moves: int) -> np.ndarray:
    """`moves` random feasible moves or swaps from `primary` (a perturbation, not an improvement)."""
    out = primary.copy()
    flat_size = sizes.ravel()
    num_devices = capacity.size
    for _ in range(moves):
        dev = out.ravel()
        room = capacity - np.bincount(dev, weights=flat_size, minlength=num_devices).astype(np.int64)
        i = int(rng.integers(dev.size))
        targets = np.flatnonzero((room >= flat_size[i]) & (np.arange(num_devices) != dev[i]))
        if targets.size and rng.random() < 0.5:
            out.ravel()[i] = int(rng.choice(targets))
            continue
        j = int(rng.integers(dev.size))
        a, b = dev[i], dev[j]
        if a != b and room[b] + flat_size[j] >= flat_size[i] and room[a] + flat_size[i] >= flat_size[j]:
            out.ravel()[i], out.ravel()[j] = b, a
    return out


def iterated_search(model: LatencyModel, capacity_bytes: np.ndarray, primary: np.ndarray, rng: np.random.Generator,
                    kicks: int, max_steps: int = 1000) -> np.ndarray:
    """Local search, then `kicks` times: perturb the best by 2-3 random moves or swaps and search again, keeping
    the result if it is better (iterated local search). The result is never worse than local_search's."""
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    best = local_search(model, capacity, primary, max_steps)
    best_s = model.token_s(best)
    for _ in range(kicks):
        trial = local_search(model, capacity, _kick(best, model.expert_bytes, capacity, rng, int(rng.integers(2, 4))),
                             max_steps)
        trial_s = model.token_s(trial)
        if trial_s < best_s * (1 - _TOL):
            best, best_s = trial, trial_s
    return best
