"""The OpenAI routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (JSON or SSE).

Each request is one job on the engine's worker thread (all prompts of a batch in one job), so requests never
interleave inside the model and concurrent clients get exactly what they would get one at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import APIRouter
from fastapi.responses import JSONResponse, StreamingResponse

from wdmoe.serve.dashboard import DashboardState
from wdmoe.serve.engine import Engine, Generation, PromptScores, Sampling
from wdmoe.serve.metrics import Metrics
from wdmoe.serve.prompts import BadRequest, encode_chat, encode_prompts, sampling_for
from wdmoe.serve.responses import chat_body, chunk, completion_body, completion_choice, cut_at_stop, new_id, sse
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
        future = engine.submit(_complete_all, engine, prompts, samplings, body.logprobs, body.echo)
        results = await asyncio.wrap_future(future)
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
        gen = await asyncio.wrap_future(engine.submit(_complete_one, engine, ids, sampling))
        ctx.finished(gen)
        return JSONResponse(chat_body(engine, gen, sampling.stop))

    return router


def _usage_on(body: CompletionRequest | ChatRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


def _complete_one(engine: Engine, ids: list[int], sampling: Sampling) -> Generation:
    if sampling.max_tokens == 0:
        return Generation(list(ids), [], [], [], "length", 0.0, 0.0, {})
    return engine.generate(ids, sampling)


def _complete_all(engine: Engine, prompts: list[list[int]], samplings: list[Sampling], top_n: int | None,
                  echo: bool) -> list[tuple[PromptScores | None, Generation]]:
    """Worker thread: each prompt in turn. With echo + logprobs the prompt is scored by one forward pass; a
    greedy single new token (what lm-evaluation-harness asks for) is then read off that same pass."""
    results: list[tuple[PromptScores | None, Generation]] = []
    for ids, sampling in zip(prompts, samplings, strict=True):
        if not (echo and top_n is not None):
            results.append((None, engine.generate(ids, sampling, top_n or 0) if sampling.max_tokens else
                            _complete_one(engine, ids, sampling)))
            continue
        start = time.perf_counter()
        scores = engine.prompt_logprobs(ids, top_n)
        if sampling.max_tokens == 1 and sampling.temperature == 0 and not sampling.stop:
            token = int(np.argmax(scores.next_logprobs))
            wall_s = time.perf_counter() - start
            tops = engine_top(scores.next_logprobs, top_n)
            finish = "stop" if token in engine.eos_token_ids else "length"
            gen = Generation(list(ids), [token], [float(scores.next_logprobs[token])], [tops], finish, wall_s, wall_s,
                             scores.summary)
        else:
            gen = _complete_one(engine, ids, sampling)
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
    cancel = threading.Event()

    def push(item: int | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    future = engine.submit(_generate_streaming, engine, ids, sampling, push, cancel)
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
                    cancel.set()
            gen = await asyncio.wrap_future(future)
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
            cancel.set()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _generate_streaming(engine: Engine, ids: list[int], sampling: Sampling, push: Callable[[int | None], None],
                        cancel: threading.Event) -> Generation:
    if sampling.max_tokens == 0:
        return _complete_one(engine, ids, sampling)
    return engine.generate(ids, sampling, on_token=push, cancel=cancel)
