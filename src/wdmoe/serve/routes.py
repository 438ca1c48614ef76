"""The OpenAI routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (JSON or SSE).

Each prompt is one request to the engine's scheduler (`Engine.start`): concurrent requests (and the prompts of one
request) run batched in the same forward steps, each with its own KV cache and sampling, so a client gets what it
would get alone (wdmoe.runtime.batch states the bound). A client that goes away cancels its request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from wdmoe.errors import DevicesUnavailable
from wdmoe.serve.dashboard import DashboardState
from wdmoe.serve.engine import Engine, Generation, Handle, PromptScores, QueueFull, Sampling
from wdmoe.serve.metrics import Metrics
from wdmoe.serve.prompts import BadRequest, encode_chat, encode_prompts, sampling_for
from wdmoe.serve.responses import (
    chat_body,
    chunk,
    completion_body,
    completion_choice,
    cut_at_stop,
    devices_error,
    internal_error,
    new_id,
    sse,
)
from wdmoe.serve.schemas import ChatRequest, CompletionRequest, Limits

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions


@dataclass
class ServeContext:
    engine: Engine
    limits: Limits
    metrics: Metrics
    dashboard: DashboardState

    def finished(self, gen: Generation) -> None:
        self.metrics.observe_generation(len(gen.prompt_ids), len(gen.tokens), gen.ttft_s, gen.wall_s, gen.summary)
        self.dashboard.request_done()


def openai_router(ctx: ServeContext) -> APIRouter:
    router = APIRouter(prefix="/v1")
    engine, limits = ctx.engine, ctx.limits

    @router.get("/models")
    async def models() -> dict[str, Any]:
        card = {"id": engine.name, "object": "model", "created": 0, "owned_by": "wdmoe",
                "max_model_len": engine.context_length,
                "wdmoe": {"vocab_size": engine.vocab_size, "tokenizer": engine.tokenizer is not None,
                          "devices": engine.model.num_devices, "max_tokens": limits.max_tokens}}
        return {"object": "list", "data": [card]}

    @router.post("/completions")
    async def completions(body: CompletionRequest) -> Any:
        prompts = await asyncio.wrap_future(engine.tokenize(encode_prompts, engine, body.prompt, limits))
        samplings = [sampling_for(engine, limits, len(ids), body.max_tokens, body.temperature, body.top_p, body.seed,
                                  body.stop, default_tokens=COMPLETION_DEFAULT_TOKENS) for ids in prompts]
        if body.stream:
            if len(prompts) > 1 or body.echo or body.logprobs is not None:
                raise BadRequest("stream: streaming takes one prompt, without echo or logprobs", "stream")
            return _stream(ctx, prompts[0], samplings[0], chat=False, include_usage=_usage_on(body))
        results = await _complete_all(engine, prompts, samplings, body.logprobs, body.echo)
        for _, gen in results:
            ctx.finished(gen)
        choices = [completion_choice(engine, i, gen, scores, body.echo, body.logprobs, samplings[i].stop)
                   for i, (scores, gen) in enumerate(results)]
        return JSONResponse(completion_body(engine, choices, [gen for _, gen in results]))

    @router.post("/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        ids = await asyncio.wrap_future(engine.tokenize(encode_chat, engine, body.messages, limits))
        sampling = sampling_for(engine, limits, len(ids), body.requested_tokens, body.temperature, body.top_p,
                                body.seed, body.stop)
        if body.stream:
            return _stream(ctx, ids, sampling, chat=True, include_usage=_usage_on(body))
        gen = await _complete_one(engine, ids, sampling)
        ctx.finished(gen)
        return JSONResponse(chat_body(engine, gen, sampling.stop))

    return router


def _usage_on(body: CompletionRequest | ChatRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _complete_one(engine: Engine, ids: list[int], sampling: Sampling, top_n: int = 0) -> Generation:
    """One generation; cancelled when the client goes away (the awaiting task is cancelled)."""
    return (await _await_all([engine.start(ids, sampling, top_n)]))[0]


async def _await_all(handles: list[Handle]) -> list[Generation]:
    try:
        return list(await asyncio.gather(*(asyncio.wrap_future(h.future) for h in handles)))
    except BaseException:  # the client went away (CancelledError) or one failed: retire the others
        for handle in handles:
            handle.cancel()
        raise


def _start_all(engine: Engine, prompts: list[list[int]], samplings: list[Sampling], top_n: int) -> list[Handle]:
    """Every prompt handed to the engine, or none (a full queue refuses the whole request)."""
    handles: list[Handle] = []
    try:
        for ids, sampling in zip(prompts, samplings, strict=True):
            handles.append(engine.start(ids, sampling, top_n))
    except QueueFull:
        for handle in handles:
            handle.cancel()
        raise
    return handles


async def _complete_all(engine: Engine, prompts: list[list[int]], samplings: list[Sampling], top_n: int | None,
                        echo: bool) -> list[tuple[PromptScores | None, Generation]]:
    """Every prompt at once (they share the forward steps). With echo + logprobs the prompt is scored by one
    forward pass on the worker thread; a greedy single new token (what lm-evaluation-harness asks for) is then read
    off that same pass."""
    if not (echo and top_n is not None):
        gens = await _await_all(_start_all(engine, prompts, samplings, top_n or 0))
        return [(None, gen) for gen in gens]
    results: list[tuple[PromptScores | None, Generation]] = []
    for ids, sampling in zip(prompts, samplings, strict=True):
        start = time.perf_counter()
        scores = await asyncio.wrap_future(engine.submit(engine.prompt_logprobs, ids, top_n))
        if sampling.max_tokens == 1 and sampling.temperature == 0 and not sampling.stop:
            token = int(np.argmax(scores.next_logprobs))
            wall_s = time.perf_counter() - start
            tops = engine_top(scores.next_logprobs, top_n)
            finish = "stop" if token in engine.eos_token_ids else "length"
            gen = Generation(list(ids), [token], [float(scores.next_logprobs[token])], [tops], finish, wall_s, wall_s,
                             scores.summary)
        else:
            gen = await _complete_one(engine, ids, sampling)
        results.append((scores, gen))
    return results


def engine_top(logp: np.ndarray, n: int) -> dict[int, float]:
    if n <= 0:
        return {}
    order = np.argsort(-logp, kind="stable")[:n]
    return {int(i): float(logp[i]) for i in order}


def _stream(ctx: ServeContext, ids: list[int], sampling: Sampling, chat: bool, include_usage: bool
            ) -> StreamingResponse:
    """Start the generation now (so a full queue still answers 429), then stream its tokens as SSE."""
    engine = ctx.engine
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    def push(item: int | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    handle = engine.start(ids, sampling, on_token=push)
    future = handle.future
    future.add_done_callback(lambda _: push(None))
    request_id = new_id("chatcmpl" if chat else "cmpl")

    async def events() -> AsyncIterator[str]:
        tokens: list[int] = []
        sent = ""
        stopped = False
        try:
            if chat:
                yield sse(chunk(engine, request_id, chat, "", None, role=True))
            while (token := await queue.get()) is not None:
                if stopped:
                    continue
                tokens.append(token)
                text, stopped = cut_at_stop(engine.decode(tokens), sampling.stop)
                if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                    yield sse(chunk(engine, request_id, chat, text[len(sent) :], None))
                    sent = text
                if stopped:
                    handle.cancel()
            try:
                gen = await asyncio.wrap_future(future)
            except Exception as exc:  # the 200 and some tokens are out: the error becomes the stream's last event
                yield _stream_error(ctx, exc)
                yield "data: [DONE]\n\n"
                return
            ctx.finished(gen)
            finish = "stop" if stopped else gen.finish_reason
            yield sse(chunk(engine, request_id, chat, None if chat else "", finish))
            if include_usage:
                final = completion_body(engine, [], [gen]) if not chat else chat_body(engine, gen, sampling.stop)
                yield sse({"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": final["created"], "model": engine.name, "choices": [],
                           "usage": final["usage"], "wdmoe": final["wdmoe"]})
            yield "data: [DONE]\n\n"
        finally:
            handle.cancel()  # the client went away (or the stream ended): retire the request at the next step

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _stream_error(ctx: ServeContext, exc: Exception) -> str:
    """The SSE event of a generation that failed mid-stream (OpenAI's error shape, as its API streams errors)."""
    if isinstance(exc, DevicesUnavailable):
        ctx.metrics.requests_failed.labels(reason="devices_unavailable").inc()
        return sse(devices_error(exc))
    logging.getLogger(__name__).error("a streamed generation failed", exc_info=exc)
    ctx.metrics.requests_failed.labels(reason="internal_error").inc()
    return sse(internal_error(exc))
