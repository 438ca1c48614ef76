"""Per-layer dispatch round trip of the device pools, against a multiprocessing.Pipe floor, side by side in one run.

The setting of issue 5: one decode token, 2 active devices, hidden size 4096 in fp16 (8 KiB down and 8 KiB up per
device). The experts are real (a Mixtral split, 2 experts, intermediate size --inter) and tiny, so the times are
the transport's, except that torch's fp16 linear on a CPU without fp16 arithmetic costs ~130 us per expert here
whatever its size (the 4096-wide down projection): `--expert-dtype float32` stores the experts in fp32 (the devices
compute in it and answer in the wire's fp16) to see the transport without that.
Measured, interleaved round by round, for:

- floor: 2 child processes that echo the same bytes over multiprocessing.Pipe (send both, receive both);
- local: the in-process pool (no transport at all: the expert compute itself);
- ray: plain Ray actor calls (one per device, gathered with ray.wait);
- direct: the Ray backend's default data path, an authenticated socket per device actor (wdmoe.backends.direct);
- compiled: one Ray Compiled Graph round over shared-memory channels.

`fastest` is the one of ray, direct and compiled with the lowest ratio. Ratios are of medians to the floor's median
measured in the same phase: each distributed path has a phase of its own, interleaved round by round with the
floor (plain Ray calls leave background work that would slow the next path down, and a compiled graph's actors spin
in its execution loop).

    python bench/transport_overhead.py [--json] [--rounds 400]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from wdmoe.backends.base import DeviceBatch
from wdmoe.backends.local import LocalDevicePool
from wdmoe.backends.ray_cluster import RayOptions
from wdmoe.backends.ray_pool import RayDevicePool
from wdmoe.model.shards import Manifest
from wdmoe.model.split import split_model
from wdmoe.model.tiny import tiny_model


def echo(conn: Connection) -> None:
    while payload := conn.recv_bytes():
        conn.send_bytes(payload)


class PipeFloor:
    """2 echo processes; one round sends each the same bytes and receives them back."""

    def __init__(self, nbytes: int) -> None:
        self.payload = os.urandom(nbytes)
        self.conns, self.procs = [], []
        for _ in range(2):
            ours, theirs = mp.Pipe()
            proc = mp.Process(target=echo, args=(theirs,), daemon=True)
            proc.start()
            self.conns.append(ours)
            self.procs.append(proc)

    def round(self) -> None:
        for conn in self.conns:
            conn.send_bytes(self.payload)
        for conn in self.conns:
            conn.recv_bytes()

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            conn.send_bytes(b"")
            proc.join()


def stats_us(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": statistics.median(ordered) * 1e6, "p99_us": ordered[int(0.99 * (len(ordered) - 1))] * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--inter", type=int, default=16, help="expert intermediate size (tiny: transport dominates)")
    parser.add_argument("--expert-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the local pool computes on one thread, like each device actor (torch_threads=1)

    model = tiny_model(
        "mixtral", hidden_size=args.hidden, intermediate_size=args.inter, num_local_experts=2, num_hidden_layers=1,
        num_attention_heads=32, num_key_value_heads=8,
    ).to(getattr(torch, args.expert_dtype))
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name) / "split"
    split_model(model, root, 2)
    del model
    manifest = Manifest.read(root)
    hidden = torch.randn(1, args.hidden, dtype=torch.float16)
    batches = [DeviceBatch(d, 0, hidden, torch.zeros(1, dtype=torch.int64), torch.tensor([d])) for d in range(2)]

    floor = PipeFloor(hidden.numel() * hidden.element_size())
    local = LocalDevicePool(root, manifest)
    ray_pool = RayDevicePool(root, manifest, RayOptions(object_store_mb=150), transport="plain", torch_threads=1)

    def measure(paths: dict[str, Callable[[], object]]) -> dict[str, list[float]]:
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for i in range(args.warmup + args.rounds):
            for name, run in paths.items():
                start = time.perf_counter()
                run()
                if i >= args.warmup:
                    samples[name].append(time.perf_counter() - start)
        return samples

    def via(transport: str) -> Callable[[], object]:
        def dispatch() -> object:
            ray_pool.transport = transport
            return ray_pool.dispatch(batches)

        return dispatch

    # one phase per distributed path, each interleaved round by round with the floor: the background work of plain
    # Ray calls (reference counting, object store) would slow the next path's round, and a compiled graph keeps its
    # actors spinning in its execution loop, so it comes last
    plain = measure({"floor": floor.round, "local": lambda: local.dispatch(batches), "ray": via("plain")})
    direct = measure({"floor": floor.round, "direct": via("direct")})
    compiled = measure({"floor": floor.round, "compiled": via("compiled")})
    samples = {
        **plain, "floor_direct_phase": direct["floor"], "direct": direct["direct"],
        "floor_compiled_phase": compiled["floor"], "compiled": compiled["compiled"],
    }
    compile_s = ray_pool.compile_s
    ray_pool.close()
    floor.close()
    tmp.cleanup()

    result = {name: stats_us(s) for name, s in samples.items()}
    floor_of = {"local": "floor", "ray": "floor", "direct": "floor_direct_phase", "compiled": "floor_compiled_phase"}
    ratio = {name: result[name]["median_us"] / result[floor_of[name]]["median_us"] for name in floor_of}
    fastest = min(("ray", "direct", "compiled"), key=ratio.__getitem__)  # phases differ: compare to their floors
    report = {
        "setting": {
            "hidden": args.hidden, "dtype": "float16", "expert_dtype": args.expert_dtype, "tokens": 1,
            "active_devices": 2, "rounds": args.rounds,
        },
        **result,
        "fastest_path": fastest,
        "ratio_to_floor": {
            "local": ratio["local"], "ray": ratio["ray"], "fastest": ratio[fastest], "direct": ratio["direct"],
            "compiled": ratio["compiled"],
        },
        "compile_s": compile_s,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"per-layer round trip, 1 token, 2 devices, hidden {args.hidden} fp16, {args.rounds} rounds each")
    for name in result:
        times = f"median {result[name]['median_us']:8.1f} us  p99 {result[name]['p99_us']:8.1f} us"
        print(f"  {name:21s} {times}" + (f"  {ratio[name]:5.2f}x floor" if name in ratio else ""))
    print(f"fastest distributed path: {fastest}, {ratio[fastest]:.2f}x the Pipe floor")


if __name__ == "__main__":
    main()
