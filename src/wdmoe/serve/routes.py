"""The OpenAI routes: GET /v1/models[/{id}], POST /v1/completions, POST /v1/chat/completions (JSON or SSE), and
vLLM's POST /tokenize and /detokenize.

Each prompt is one request to the engine's scheduler (`Engine.start`): concurrent requests (and the prompts of one
request) run batched in the same forward steps, each with its own KV cache and sampling, so a client gets what it
would get alone (wdmoe.runtime.batch states the bound). A client that disconnects cancels its request, streamed or
not: a watcher polls `request.is_disconnected()` and retires the request at the next step. A stream holds back
text that could still become a stop string, so the streamed text always equals the plain answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse

from wdmoe.errors import DevicesUnavailable
from wdmoe.serve.dashboard import DashboardState
from wdmoe.serve.engine import Engine, Generation, Handle, PromptScores, QueueFull, Sampling
from wdmoe.serve.metrics import Metrics
from wdmoe.serve.openapi import GENERATION_RESPONSES, MODEL_RESPONSES, TOKENIZER_RESPONSES, error
from wdmoe.serve.prompts import BadRequest, check_vocabulary, encode_chat, encode_prompts, sampling_for, tokenize
from wdmoe.serve.responses import (
    chat_body,
    chunk,
    completion_body,
    completion_choice,
    cut_at_stop,
    devices_error,
    internal_error,
    new_id,
    sendable,
    sse,
)
from wdmoe.serve.schemas import (
    NOT_HONOURED,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    Limits,
    TokenizePrompt,
    TokenizeRequest,
)

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default max_tokens of /v1/completions
DISCONNECT_POLL_S = 0.1  # how often a request's watcher asks whether its client is still there
R = TypeVar("R")


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its engine work was cancelled."""


class ModelNotFound(LookupError):
    def __init__(self, asked: str, served: str) -> None:
        super().__init__(f"model {asked!r} is not served here; this server serves {served!r} (GET /v1/models)")


@dataclass
class ServeContext:
    engine: Engine
    limits: Limits
    metrics: Metrics
    dashboard: DashboardState

    def finished(self, gen: Generation) -> None:
        self.metrics.observe_generation(len(gen.prompt_ids), len(gen.tokens), gen.ttft_s, gen.wall_s, gen.summary)
        self.dashboard.request_done()


def model_card(engine: Engine, limits: Limits) -> dict[str, Any]:
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "wdmoe",
            "max_model_len": engine.context_length,
            "wdmoe": {"vocab_size": engine.vocab_size, "tokenizer": engine.tokenizer is not None,
                      "devices": engine.model.num_devices, "max_tokens": limits.max_tokens}}


def refuse_not_honoured(body: CompletionRequest | ChatRequest) -> None:
    """400 naming the first OpenAI parameter set to a value the server does not honour (schemas.NOT_HONOURED)."""
    name = body.not_honoured()
    if name is not None:
        neutral = " or ".join(repr(v) for v in NOT_HONOURED[name] if v is not None)
        raise BadRequest(f"{name} = {getattr(body, name)!r}: not supported by this server yet (only {neutral}); "
                         "leave it out", name)


def _sampling_of(engine: Engine, limits: Limits, body: CompletionRequest | ChatRequest, prompt_len: int,
                 max_tokens: int | None, default_tokens: int | None = None) -> Sampling:
    return sampling_for(engine, limits, prompt_len, max_tokens, body.temperature, body.top_p, body.seed, body.stop,
                        default_tokens=default_tokens, ignore_eos=body.ignore_eos,
                        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty,
                        logit_bias=body.logit_bias)


def openai_router(ctx: ServeContext) -> APIRouter:
    router = APIRouter(prefix="/v1")
    engine, limits = ctx.engine, ctx.limits

    @router.get("/models", responses=MODEL_RESPONSES)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(engine, limits)]}

    @router.get("/models/{model_id:path}", responses={**MODEL_RESPONSES, 404: error("No model of that id is served")})
    async def model(model_id: str = Path(examples=[engine.name])) -> JSONResponse:
        if model_id != engine.name:
            raise ModelNotFound(model_id, engine.name)
        return JSONResponse(model_card(engine, limits))

    @router.post("/completions", responses=GENERATION_RESPONSES)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        refuse_not_honoured(body)
        prompts = await asyncio.wrap_future(engine.tokenize(encode_prompts, engine, body.prompt, limits))
        samplings = [_sampling_of(engine, limits, body, len(ids), body.max_tokens, COMPLETION_DEFAULT_TOKENS)
                     for ids in prompts]
        if body.stream:
            if len(prompts) > 1 or body.echo or body.logprobs is not None:
                raise BadRequest("stream: streaming takes one prompt, without echo or logprobs", "stream")
            return _stream(ctx, request, prompts[0], samplings[0], chat=False, include_usage=_usage_on(body))
        results = await _unless_gone(ctx, request, _complete_all(engine, prompts, samplings, body.logprobs,
                                                                 body.echo))
        for _, gen in results:
            ctx.finished(gen)
        choices = [completion_choice(engine, i, gen, scores, body.echo, body.logprobs, samplings[i].stop)
                   for i, (scores, gen) in enumerate(results)]
        return JSONResponse(completion_body(engine, choices, [gen for _, gen in results]))

    @router.post("/chat/completions", responses=GENERATION_RESPONSES)
    async def chat(body: ChatRequest, request: Request) -> Any:
        refuse_not_honoured(body)
        for name in ("max_tokens", "max_completion_tokens"):  # the second wins, but neither may pass the limit
            if (value := getattr(body, name)) is not None and value > limits.max_tokens:
                raise BadRequest(f"{name} = {value}: the limit is {limits.max_tokens} new tokens", name)
        ids = await asyncio.wrap_future(engine.tokenize(encode_chat, engine, body.messages, limits))
        sampling = _sampling_of(engine, limits, body, len(ids), body.requested_tokens)
        if body.stream:
            return _stream(ctx, request, ids, sampling, chat=True, include_usage=_usage_on(body))
        gen = await _unless_gone(ctx, request, _complete_one(engine, ids, sampling))
        ctx.finished(gen)
        return JSONResponse(chat_body(engine, gen, sampling.stop))

    return router


def tokenizer_router(ctx: ServeContext) -> APIRouter:
    """vLLM's /tokenize and /detokenize: the ids the completion routes would use, and text back from ids."""
    router = APIRouter()
    engine, limits = ctx.engine, ctx.limits

    @router.post("/tokenize", responses=TOKENIZER_RESPONSES)
    async def tokenize_route(body: TokenizeRequest) -> JSONResponse:
        prompt, messages = (body.prompt, None) if isinstance(body, TokenizePrompt) else (None, body.messages)
        ids = await asyncio.wrap_future(engine.tokenize(tokenize, engine, prompt, messages, body.add_special_tokens,
                                                        limits))
        strings = [engine.token_text(i) for i in ids] if body.return_token_strs else None
        return JSONResponse({"count": len(ids), "max_model_len": engine.context_length, "tokens": ids,
                             "token_strs": strings})

    @router.post("/detokenize", responses=TOKENIZER_RESPONSES)
    async def detokenize_route(body: DetokenizeRequest) -> JSONResponse:
        check_vocabulary(engine, body.tokens, "tokens")
        text = await asyncio.wrap_future(engine.tokenize(engine.decode, body.tokens))
        return JSONResponse({"prompt": text})

    return router


def _usage_on(body: CompletionRequest | ChatRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


async def _watch_client(request: Request, gone: Callable[[], None]) -> None:
    """Poll until the client disconnects, then call `gone` (the caller cancels this watcher once it answered)."""
    while not await request.is_disconnected():
        await asyncio.sleep(DISCONNECT_POLL_S)
    gone()


async def _unless_gone(ctx: ServeContext, request: Request, work: Awaitable[R]) -> R:
    """`work`'s result, or ClientGone once the client has disconnected: the work's task is then cancelled, which
    cancels its engine requests (`_await_all`)."""
    task = asyncio.ensure_future(work)

    def gone() -> None:
        ctx.metrics.cancelled.inc()
        task.cancel()

    watcher = asyncio.create_task(_watch_client(request, gone))
    try:
        return await task
    except asyncio.CancelledError:
        if task.cancelled() and watcher.done():
            raise ClientGone from None
        raise
    finally:
        watcher.cancel()


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


def _stream(ctx: ServeContext, request: Request, ids: list[int], sampling: Sampling, chat: bool,
            include_usage: bool) -> StreamingResponse:
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
    gone_seen = asyncio.Event()

    def gone() -> None:
        gone_seen.set()
        handle.cancel()
        push(None)  # wakes the stream, which then ends without waiting for the request

    async def events() -> AsyncIterator[str]:
        watcher = asyncio.create_task(_watch_client(request, gone))
        tokens: list[int] = []
        sent = ""
        stopped = done = False
        try:
            if chat:
                yield sse(chunk(engine, request_id, chat, "", None, role=True))
            while (token := await queue.get()) is not None:
                if stopped:
                    continue
                tokens.append(token)
                text, stopped = cut_at_stop(engine.decode(tokens), sampling.stop)
                piece = sendable(text, sent, () if stopped else sampling.stop)
                if piece:
                    yield sse(chunk(engine, request_id, chat, piece, None))
                    sent += piece
                if stopped:
                    handle.cancel()
            if gone_seen.is_set():
                return
            try:
                gen = await asyncio.wrap_future(future)
            except Exception as exc:  # the 200 and some tokens are out: the error becomes the stream's last event
                yield _stream_error(ctx, exc)
                yield "data: [DONE]\n\n"
                return
            ctx.finished(gen)
            final, _ = cut_at_stop(engine.decode(gen.tokens), sampling.stop)
            if final.startswith(sent) and len(final) > len(sent):  # what was held back, now known not to be a stop
                yield sse(chunk(engine, request_id, chat, final[len(sent) :], None))
            finish = "stop" if stopped else gen.finish_reason
            yield sse(chunk(engine, request_id, chat, None if chat else "", finish))
            if include_usage:
                body = completion_body(engine, [], [gen]) if not chat else chat_body(engine, gen, sampling.stop)
                yield sse({"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": body["created"], "model": engine.name, "choices": [],
                           "usage": body["usage"], "wdmoe": body["wdmoe"]})
            yield "data: [DONE]\n\n"
            done = True
        finally:  # normal end, or the client gone (seen by the watcher, or the stream cancelled by the server)
            watcher.cancel()
            if gone_seen.is_set() or not (done or future.done()):
                ctx.metrics.cancelled.inc()
            handle.cancel()  # retire the request at the next step (nothing if it already finished)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _stream_error(ctx: ServeContext, exc: Exception) -> str:
    """The SSE event of a generation that failed mid-stream (OpenAI's error shape, as its API streams errors)."""
    if isinstance(exc, DevicesUnavailable):
        ctx.metrics.requests_failed.labels(reason="devices_unavailable").inc()
        return sse(devices_error(exc))
    logging.getLogger(__name__).error("a streamed generation failed", exc_info=exc)
    ctx.metrics.requests_failed.labels(reason="internal_error").inc()
    return sse(internal_error(exc))
