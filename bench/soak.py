"""Soak test of `wdmoe serve`: many concurrent clients for minutes against a local server; zero errors, and the
server's resident memory (RSS) must not grow by 10% or more.

    python bench/soak.py [--clients 16] [--duration-s 300] [--model DIR] [--json]

The server runs in its own process (so its RSS is its own) on 127.0.0.1, with the default model unless --model
is given. Each client loops over three request kinds: a streamed chat completion, a plain completion, and an
echo + logprobs scoring request (what lm-evaluation-harness sends), and checks every answer's shape and length.
RSS growth is measured from the end of a warm-up (allocator pools and caches fill in the first requests) to the
end, and reported from the start too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import socket
import time
from pathlib import Path
from typing import Any

import httpx

MAX_GROWTH = 0.10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _serve(model_dir: str | None, port: int, max_tokens: int) -> None:
    import uvicorn

    from wdmoe.cli.serve_cmd import Backend, load_engine
    from wdmoe.serve import Limits, create_app
    from wdmoe.serve.server import uvicorn_config

    engine = load_engine(Path(model_dir) if model_dir else None, None, "topk", 0.5, None, Backend.local)
    app = create_app(engine, limits=Limits(max_tokens=max_tokens, max_queue=256))
    uvicorn.Server(uvicorn_config(app, "127.0.0.1", port)).run()


async def _request(client: httpx.AsyncClient, kind: int, rng: random.Random, vocab: int, max_tokens: int) -> None:
    prompt = [rng.randrange(1, vocab) for _ in range(rng.randint(4, 24))]
    if kind == 0:
        body = {"messages": [{"role": "user", "content": " ".join(map(str, prompt))}], "max_tokens": max_tokens,
                "temperature": 0, "stream": True}
        pieces = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"chat stream: HTTP {response.status_code}")
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    pieces += bool(json.loads(line[6:])["choices"][0]["delta"].get("content"))
        if pieces != max_tokens:
            raise RuntimeError(f"chat stream: {pieces} content chunks, expected {max_tokens}")
        return
    echo = kind == 2
    body = {"prompt": prompt, "max_tokens": 1 if echo else max_tokens, "temperature": 0}
    if echo:
        body.update(echo=True, logprobs=1)
    response = await client.post("/v1/completions", json=body)
    if response.status_code != 200:
        raise RuntimeError(f"completion: HTTP {response.status_code}: {response.text[:200]}")
    choice = response.json()["choices"][0]
    if echo and len(choice["logprobs"]["token_logprobs"]) != len(prompt) + 1:
        raise RuntimeError("echo: wrong number of token logprobs")
    if not echo and response.json()["usage"]["completion_tokens"] != max_tokens:
        raise RuntimeError("completion: wrong number of new tokens")


async def _clients(url: str, clients: int, duration_s: float, max_tokens: int, pid: int, warmup_s: float
                   ) -> dict[str, Any]:
    counts = {"ok": 0, "errors": 0}
    errors: list[str] = []
    rss: list[tuple[float, int]] = [(0.0, rss_bytes(pid))]
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        vocab = int((await client.get("/v1/models")).json()["data"][0]["wdmoe"]["vocab_size"])

        async def one_client(index: int) -> None:
            rng = random.Random(index)
            kind = index % 3
            while time.monotonic() - start < duration_s:
                try:
                    await _request(client, kind, rng, vocab, max_tokens)
                    counts["ok"] += 1
                except (httpx.HTTPError, RuntimeError, KeyError, ValueError) as exc:
                    counts["errors"] += 1
                    errors.append(f"{type(exc).__name__}: {exc}")
                kind = (kind + 1) % 3

        async def sample_rss() -> None:
            while time.monotonic() - start < duration_s:
                await asyncio.sleep(2.0)
                rss.append((time.monotonic() - start, rss_bytes(pid)))

        await asyncio.gather(sample_rss(), *(one_client(i) for i in range(clients)))
    rss.append((time.monotonic() - start, rss_bytes(pid)))
    warm = next(value for t, value in rss if t >= warmup_s) if rss[-1][0] >= warmup_s else rss[0][1]
    end = rss[-1][1]
    return {
        "clients": clients, "duration_s": time.monotonic() - start, "requests_ok": counts["ok"],
        "errors": counts["errors"], "first_errors": errors[:5],
        "rss_start_mb": rss[0][1] / 2**20, "rss_after_warmup_mb": warm / 2**20, "rss_end_mb": end / 2**20,
        "rss_max_mb": max(v for _, v in rss) / 2**20, "warmup_s": warmup_s,
        "rss_growth_after_warmup": (end - warm) / warm, "rss_growth_from_start": (end - rss[0][1]) / rss[0][1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--warmup-s", type=float, default=None, help="default: 10%% of the duration")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--model", type=str, default=None, help="model directory (default: the shipped model)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    port = free_port()
    server = mp.get_context("spawn").Process(target=_serve, args=(args.model, port, args.max_tokens), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not server.is_alive():
                raise SystemExit("the server did not start")
            time.sleep(0.5)
        assert server.pid is not None
        warmup = args.warmup_s if args.warmup_s is not None else 0.1 * args.duration_s
        report = asyncio.run(_clients(url, args.clients, args.duration_s, args.max_tokens, server.pid, warmup))
    finally:
        server.terminate()
        server.join(timeout=15)
    report["passed"] = report["errors"] == 0 and report["rss_growth_after_warmup"] < MAX_GROWTH
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['requests_ok']} requests answered, {report['errors']} errors, {args.clients} clients, "
              f"{report['duration_s']:.0f} s; server RSS {report['rss_start_mb']:.0f} MB at start, "
              f"{report['rss_after_warmup_mb']:.0f} MB after {warmup:.0f} s warm-up, {report['rss_end_mb']:.0f} MB "
              f"at the end (max {report['rss_max_mb']:.0f}): growth {100 * report['rss_growth_after_warmup']:.1f}% "
              f"after warm-up, {100 * report['rss_growth_from_start']:.1f}% from start; "
              f"{'PASS' if report['passed'] else 'FAIL'}")
    raise SystemExit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
