"""The serving benchmark behind `wdmoe bench`, in the manner of vLLM's `bench serve`.

`run_bench(url, ...)` sends `num_requests` streaming /v1/completions requests, at most `concurrency` at a time,
each a random token-id prompt (seeded), and measures per request the TTFT (first streamed text), the TPOT
((end-to-end - TTFT) / (new tokens - 1)) and the end-to-end latency; the server's `wdmoe` extension adds the radio
model's bytes on air and energy. With `request_rate` the requests arrive as a Poisson process of that rate (seeded
exponential gaps, as vLLM's `--request-rate`), still at most `concurrency` in flight; otherwise all at once.
`ignore_eos` asks the server for exactly `max_tokens` tokens each. A stream that ends without a `finish_reason` or
without `data: [DONE]` is a failed request (cut). `summarize_bench` reduces the results to mean, p50, p95, p99 and
max.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from wdmoe.errors import WdmoeError

DEFAULT_VOCAB = 100  # token ids used against a server that does not tell its vocabulary


@dataclass(frozen=True)
class RequestResult:
    ok: bool
    error: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    e2e_s: float
    bytes_on_air: float | None
    energy_j: float | None
    modeled_ttft_s: float | None = None  # the radio model's, from the server's `wdmoe` extension
    modeled_tpot_s: float | None = None

    @property
    def tpot_s(self) -> float | None:
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1) if self.completion_tokens > 1 else None


def check_url(url: str) -> str:
    """The base URL without a trailing slash; refused (naming the option) unless it is http(s)://HOST[:PORT]."""
    parsed = httpx.URL(url) if "://" in url else None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise WdmoeError(f"--url {url!r}: expected http://HOST:PORT or https://HOST:PORT, e.g. http://127.0.0.1:8000")
    return url.rstrip("/")


async def _model_card(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    """The served model's card, or one line saying why the server could not be asked."""
    try:
        response = await client.get(f"{url}/v1/models")
    except httpx.TransportError as exc:
        raise WdmoeError(f"--url {url}: no server answered ({type(exc).__name__}: {exc}); is `wdmoe serve` "
                         "running there?") from exc
    if response.status_code == 401:
        raise WdmoeError(f"--url {url}: the server wants an API key (401); give --api-key-file with the key it "
                         "was started with")
    if response.status_code != 200:
        raise WdmoeError(f"--url {url}: GET /v1/models answered {response.status_code}, not an OpenAI-compatible "
                         "model list")
    try:
        return dict(response.json()["data"][0])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise WdmoeError(f"--url {url}: GET /v1/models did not return an OpenAI model list") from exc


def make_prompts(num: int, vocab: int, prompt_len: int, seed: int) -> list[list[int]]:
    """`num` random prompts of token ids in [1, vocab), lengths uniform in [prompt_len / 2, prompt_len]."""
    rng = random.Random(seed)
    low = max(1, prompt_len // 2)
    return [[rng.randrange(1, vocab) for _ in range(rng.randint(low, prompt_len))] for _ in range(num)]


def arrival_times(num: int, request_rate: float | None, seed: int) -> list[float]:
    """When each request is sent, in seconds from the start: all at 0 without a rate, else a Poisson process of
    `request_rate` per second (exponential gaps, seeded; the first request at 0)."""
    if request_rate is None or request_rate == float("inf"):
        return [0.0] * num
    gaps = np.random.default_rng(seed).exponential(1.0 / request_rate, size=max(0, num - 1))
    return [0.0, *np.cumsum(gaps).tolist()][:num]


async def bench_one(client: httpx.AsyncClient, url: str, model: str, prompt: list[int], max_tokens: int,
               ignore_eos: bool = False) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, **({"ignore_eos": True} if ignore_eos else {})}
    start = time.perf_counter()
    ttft = None
    usage: dict[str, Any] = {}
    radio: dict[str, Any] = {}
    finish: str | None = None
    done = False
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")[:200]
                return RequestResult(False, f"HTTP {response.status_code}: {text}", len(prompt), 0, 0.0, 0.0, None,
                                     None)
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                if not line.startswith("data: ") or done:
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return RequestResult(False, f"stream error: {str(event['error'])[:160]}", len(prompt), 0, 0.0,
                                         0.0, None, None)
                choices = event.get("choices", [])
                if ttft is None and any(c.get("text") for c in choices):
                    ttft = time.perf_counter() - start
                finish = next((c["finish_reason"] for c in choices if c.get("finish_reason")), finish)
                usage = event.get("usage") or usage
                radio = event.get("wdmoe") or radio
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return RequestResult(False, f"{type(exc).__name__}: {exc}", len(prompt), 0, 0.0, 0.0, None, None)
    if finish is None or not done:
        missing = " and ".join(what for what, seen in (("finish_reason", finish), ("[DONE]", done)) if not seen)
        return RequestResult(False, f"cut stream: no {missing}", len(prompt), 0, 0.0, 0.0, None, None)
    e2e = time.perf_counter() - start
    return RequestResult(True, None, int(usage.get("prompt_tokens", len(prompt))),
                         int(usage.get("completion_tokens", 0)), ttft if ttft is not None else e2e, e2e,
                         radio.get("bytes_on_air"), radio.get("energy_j"), radio.get("modeled_ttft_s"),
                         radio.get("modeled_tpot_s"))


async def run_bench(url: str, concurrency: int = 4, num_requests: int = 32, max_tokens: int = 32,
                    prompt_len: int = 32, seed: int = 0, api_key: str | None = None,
                    timeout_s: float = 600.0, request_rate: float | None = None,
                    ignore_eos: bool = False) -> dict[str, Any]:
    """Run the benchmark against the server at `url` and return `summarize_bench`'s report."""
    url = check_url(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s) as client:
        card = await _model_card(client, url)
        info = card.get("wdmoe", {})
        vocab = int(info.get("vocab_size", DEFAULT_VOCAB))
        max_len = int(card.get("max_model_len", 2048))
        prompt_len = max(1, min(prompt_len, max_len - max_tokens - 1))
        prompts = make_prompts(num_requests, vocab, prompt_len, seed)
        gate = asyncio.Semaphore(concurrency)
        start = time.perf_counter()

        async def limited(prompt: list[int], at_s: float) -> RequestResult:
            await asyncio.sleep(max(0.0, at_s - (time.perf_counter() - start)))
            async with gate:
                return await bench_one(client, url, str(card["id"]), prompt, max_tokens, ignore_eos)

        arrivals = arrival_times(num_requests, request_rate, seed)
        results = await asyncio.gather(*(limited(p, t) for p, t in zip(prompts, arrivals, strict=True)))
        duration = time.perf_counter() - start
    report = summarize_bench(list(results), duration)
    report.update(url=url, model=card["id"], concurrency=concurrency, max_tokens=max_tokens, prompt_len=prompt_len,
                  request_rate=request_rate, ignore_eos=ignore_eos)
    return report


STATS = ("mean", "p50", "p95", "p99", "max")


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(STATS)
    array = np.asarray(values)
    return {"mean": float(array.mean()), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "p99": float(np.percentile(array, 99)), "max": float(array.max())}


def summarize_bench(results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    new_tokens = sum(r.completion_tokens for r in ok)
    air = [r for r in ok if r.bytes_on_air is not None]
    air_tokens = sum(r.completion_tokens for r in air)
    return {
        "requests": len(results), "successful": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "duration_s": duration_s,
        "input_tokens": sum(r.prompt_tokens for r in ok), "output_tokens": new_tokens,
        "request_throughput_per_s": len(ok) / duration_s if duration_s else None,
        "output_tokens_per_s": new_tokens / duration_s if duration_s else None,
        "ttft_s": _stats([r.ttft_s for r in ok]),
        "tpot_s": _stats([t for r in ok if (t := r.tpot_s) is not None]),
        "e2e_s": _stats([r.e2e_s for r in ok]),
        "modeled_ttft_s": _stats([t for r in ok if (t := r.modeled_ttft_s) is not None]),
        "modeled_tpot_s": _stats([t for r in ok if (t := r.modeled_tpot_s) is not None]),
        "bytes_on_air_per_token": sum(r.bytes_on_air or 0.0 for r in air) / air_tokens if air_tokens else None,
        "energy_j_per_token": sum(r.energy_j or 0.0 for r in air) / air_tokens if air_tokens else None,
    }

