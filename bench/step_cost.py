"""The batched forward step's cost on the shipped model: one sequence's decode step against sixteen's, a prompt's
prefill and a mixed step, at the cache lengths `bench/batching.py`'s requests have, and the ratio that bounds
issue 17's throughput figure; with --against, this checkout's step against another's, side by side in one run.

    python bench/step_cost.py [--steps 300] [--against /other/checkout/src [--rounds 3]]
                              [--profile KIND | --cprofile KIND]

Kinds: dec1 and dec16 (a decode step of 1 and of 16 sequences), pre24 (one 24-token prompt, the prefill-first
schedule's prefill step), mixed (15 decode tokens and one 24-token prompt). batch gain = 16 x dec1 / dec16: the
output tokens/s of sixteen decoding sequences over one's, counting forward steps only. A cost paid once per step
whatever the batch (the Python of one forward) lowers it when cut; costs that grow with the batch's tokens, or with
the devices and experts a step touches (a one-token step reaches 2 experts per layer, a 16-token step most of the
8), raise it when cut.

Caches stay as long as the bench's requests' (prompts of 8 to 40 tokens, then up to --refresh decode steps): a
sequence whose turn it is starts again with a fresh prompt between timed steps (staggered over the sixteen), instead
of growing without end. Kinds are timed interleaved, so a change of load touches all alike; with --against, the two
checkouts run alternately in --rounds pairs of subprocesses and the medians of their rounds' medians are compared.
On the shared 2-core CPU one process's speed differs from the next one's by up to ~15% (the whole run, every kind
alike), so a change of a few percent needs many rounds; the batch gain, a ratio within one process, varies less.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("dec1", "dec16", "pre24", "mixed")


def measure(steps: int, refresh: int, profile: str | None, cprofile: str | None) -> dict[str, float]:
    """Median wall ms of each kind of step over `steps` interleaved rounds (module docstring)."""
    import torch

    from wdmoe.runtime.batch import SequenceCache
    from wdmoe.runtime.open import ModelOptions, open_model

    torch.set_num_threads(1)
    model = open_model(None, ModelOptions(devices=8))
    rng = random.Random(0)

    def prompt() -> list[int]:
        return [rng.randrange(3, 4000) for _ in range(8 + rng.randrange(33))]

    caches = [SequenceCache() for _ in range(16)]
    age = [0] * 16

    def start(i: int) -> None:
        caches[i].release()
        model.step_segments([prompt()], [caches[i]])
        age[i] = 0

    for i in range(16):
        start(i)
        age[i] = i * refresh // 16  # staggered: the sixteen start again at different steps

    def due(n: int) -> Callable[[], None]:  # untimed: the sequences whose turn it is start again
        def restart() -> None:
            for i in range(n):
                if age[i] >= refresh:
                    start(i)
        return restart

    def decode(n: int) -> Callable[[], object]:
        def step() -> object:
            out = model.step_segments([[rng.randrange(3, 4000)] for _ in range(n)], caches[:n])
            for i in range(n):
                age[i] += 1
            return out
        return step

    def prefill() -> object:
        cache = SequenceCache()
        out = model.step_segments([[rng.randrange(3, 4000) for _ in range(24)]], [cache])
        cache.release()
        return out

    def mixed() -> object:
        cache = SequenceCache()
        tokens = [[rng.randrange(3, 4000)] for _ in range(15)]
        out = model.step_segments([*tokens, [rng.randrange(3, 4000) for _ in range(24)]], [*caches[:15], cache])
        cache.release()
        for i in range(15):
            age[i] += 1
        return out

    def nothing() -> None:
        pass

    kinds = {"dec1": (due(1), decode(1)), "dec16": (due(16), decode(16)), "pre24": (nothing, prefill),
             "mixed": (due(15), mixed)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for before, f in kinds.values():
        before()
        f()  # warm-up
    for _ in range(steps):
        for name, (before, f) in kinds.items():
            before()
            begin = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - begin)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(30):  # no restart in between: only the kind's own steps are in the table
                kinds[profile][1]()
        print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=30))
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    if cprofile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(30):
            kinds[cprofile][1]()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
    model.close()
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def gain(ms: dict[str, float]) -> float:
    return 16 * ms["dec1"] / ms["dec16"]


def line(label: str, ms: dict[str, float]) -> str:
    return f"{label:<10} " + "  ".join(f"{ms[k]:7.3f}" for k in KINDS) + f"  {gain(ms):5.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps of each kind")
    parser.add_argument("--refresh", type=int, default=40, help="decode steps before a sequence starts again")
    parser.add_argument("--against", type=Path, default=None, help="another checkout's src/ to time alongside")
    parser.add_argument("--rounds", type=int, default=3, help="with --against: alternating runs of each")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the src/ to time (default: this one's)")
    parser.add_argument("--json", action="store_true", help="print the medians as JSON only")
    parser.add_argument("--profile", choices=KINDS, default=None,
                        help="print torch's profiler table by operator and shape for this kind of step")
    parser.add_argument("--cprofile", choices=KINDS, default=None,
                        help="print cProfile's table by Python function for this kind of step")
    args = parser.parse_args()
    header = f"{'median ms':<10} " + "  ".join(f"{k:>7}" for k in KINDS) + "  16 x dec1 / dec16"
    if args.against is None:
        sys.path.insert(0, str(args.src))
        ms = measure(args.steps, args.refresh, args.profile, args.cprofile)
        print(json.dumps(ms) if args.json else f"{header}\n{line('this', ms)}")
        return
    runs: dict[str, list[dict[str, float]]] = {"this": [], "against": []}
    for _ in range(args.rounds):
        for label, src in (("against", args.against), ("this", ROOT / "src")):
            out = subprocess.run([sys.executable, __file__, "--src", str(src), "--steps", str(args.steps),
                                  "--refresh", str(args.refresh), "--json"], check=True, capture_output=True,
                                 text=True).stdout
            runs[label].append(json.loads(out.strip().splitlines()[-1]))
    print(f"{args.rounds} rounds of {args.steps} steps of each kind; this = {ROOT / 'src'}, against = {args.against}")
    print(header)
    for label, rows in runs.items():
        for n, ms in enumerate(rows):
            print(line(f"{label} {n + 1}", ms))
    med = {label: {k: statistics.median(r[k] for r in rows) for k in KINDS} for label, rows in runs.items()}
    for label in runs:
        print(line(label, med[label]))
    print(f"{'this/agst':<10} " + "  ".join(f"{med['this'][k] / med['against'][k]:7.3f}" for k in KINDS)
          + f"  {gain(med['this']) / gain(med['against']):5.3f}")


if __name__ == "__main__":
    main()
