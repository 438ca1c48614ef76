"""Inter-server deployment, step 2: local search over moves and swaps across layers (memory is shared by layers).

Contract: `local_search(model, capacity_bytes, primary, max_steps)` returns primaries (L, E) no worse than
`primary` under `model.token_s`, each device's bytes within its capacity if `primary`'s were, and from which no
single step below improves (unless `max_steps` ran out). A step is the best of

    move:  one expert to another device with room for it;
    swap:  two experts on different devices exchange devices, in the same layer or in two layers,
           when each device has room for the other's expert once its own leaves.

A layer's cost depends only on its own row, so the search keeps, for every layer l, the tables
moved[l][e, d] = the layer's cost with expert e on device d, and swapped[l][e, f] = with e and f exchanged, and
recomputes them only for the layers a step changed. A swap across layers l != m then costs
moved[l][e, dev(f)] + moved[m][f, dev(e)] - cost[l] - cost[m], read from the tables (numpy over all pairs).
"""

from __future__ import annotations

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


def local_search(
    model: LatencyModel, capacity_bytes: np.ndarray, primary: np.ndarray, max_steps: int = 1000
) -> np.ndarray:
    """Best-improvement local search from `primary` (module docstring)."""
    primary = np.array(primary, dtype=np.int64)
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    num_layers, num_experts = primary.shape
    num_devices = model.num_devices
    size = model.expert_bytes.ravel().astype(np.int64)  # (N,), N = L * E items, item i = (i // E, i % E)
    layer_of = np.repeat(np.arange(num_layers), num_experts)
    cost = np.array([model.layer_s(layer, primary[layer]) for layer in range(num_layers)])
    moved = np.stack([_moved(model, layer, primary[layer]) for layer in range(num_layers)])  # (L, E, D)
    swapped = [_swapped(model, layer, primary[layer]) for layer in range(num_layers)]
    pairs = np.array([(e, f) for e in range(num_experts) for f in range(e + 1, num_experts)], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    paired = np.stack([_paired(model, layer, primary[layer], pairs) for layer in range(num_layers)])  # (L, P, D)
    same_layer = layer_of[:, None] == layer_of[None, :]
    for _ in range(max_steps):
        dev = primary.ravel()
        room = capacity - np.bincount(dev, weights=size, minlength=num_devices).astype(np.int64)
        gain = moved.reshape(-1, num_devices) - cost[layer_of][:, None]  # (N, D): delta of a move
        move = np.where((room[None, :] >= size[:, None]) & (np.arange(num_devices)[None, :] != dev[:, None]),
                        gain, np.inf)
        fits = ((room[dev][None, :] + size[None, :] >= size[:, None])
                & (room[dev][:, None] + size[:, None] >= size[None, :]) & (dev[:, None] != dev[None, :]))
        cross = gain[:, dev]  # (N, N): item i onto item j's device
        swap = np.where(fits & ~same_layer, cross + cross.T, np.inf)
        within = np.full_like(swap, np.inf)
        for layer in range(num_layers):
            span = slice(layer * num_experts, (layer + 1) * num_experts)
            within[span, span] = swapped[layer] - cost[layer]
        swap = np.minimum(swap, np.where(fits & same_layer, within, np.inf))
        first = dev.reshape(num_layers, num_experts)[:, pairs[:, 0]]  # (L, P)
        second = dev.reshape(num_layers, num_experts)[:, pairs[:, 1]]
        flat = size.reshape(num_layers, num_experts)
        targets = np.arange(num_devices)[None, None, :]
        need = (np.where(first[..., None] != targets, flat[:, pairs[:, 0]][..., None], 0)
                + np.where(second[..., None] != targets, flat[:, pairs[:, 1]][..., None], 0))  # (L, P, D)
        together = np.where((room[None, None, :] >= need) & (need > 0), paired - cost[:, None, None], np.inf)
        best_move, best_swap = float(move.min()), float(swap.min())
        best_pair = float(together.min()) if together.size else np.inf
        if min(best_move, best_swap, best_pair) >= -_TOL * float(cost.sum()):
            break
        changed: set[int] = set()
        if best_pair < min(best_move, best_swap):
            at, p, d = np.unravel_index(int(np.argmin(together)), together.shape)
            primary[int(at), pairs[p]] = int(d)
            changed.add(int(at))
        elif best_move <= best_swap:
            i, d = np.unravel_index(int(np.argmin(move)), move.shape)
            primary[divmod(int(i), num_experts)] = int(d)
            changed.add(int(layer_of[i]))
        else:
            i, j = np.unravel_index(int(np.argmin(swap)), swap.shape)
            a, b = divmod(int(i), num_experts), divmod(int(j), num_experts)
            primary[a], primary[b] = primary[b], primary[a]
            changed.update((a[0], b[0]))
        for layer in changed:
            cost[layer] = model.layer_s(layer, primary[layer])
            moved[layer] = _moved(model, layer, primary[layer])
            swapped[layer] = _swapped(model, layer, primary[layer])
            paired[layer] = _paired(model, layer, primary[layer], pairs)
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
