"""The OpenAI routes: GET /v1/models[/{id}], POST /v1/completions, POST /v1/chat/completions (JSON or SSE), and
vLLM's POST /tokenize and /detokenize.

Each prompt (and each of its `n` choices) is one request to the engine's scheduler (`Engine.start`): concurrent
requests, the prompts of one request and the choices of one prompt run batched in the same forward steps, each with
its own KV cache and sampling, so a client gets what it would get alone (wdmoe.runtime.batch states the bound).
Choice j of a prompt samples with `choice_seed(seed, j)`: reproducible under a seed, different draws per choice;
`usage` counts each prompt once and every choice's new tokens. A client that disconnects cancels its request,
streamed or not: a watcher polls `request.is_disconnected()` and retires the request at the next step. A stream
holds back text that could still become a stop string, so the streamed text always equals the plain answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, StreamingResponse

from wdmoe.errors import DevicesUnavailable
from wdmoe.serve.dashboard import DashboardState
from wdmoe.serve.engine import Engine, Generation, Handle, PromptScores, QueueFull, Sampling, choice_seed
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


def choices_of(body: CompletionRequest | ChatRequest, prompts: int, limits: Limits) -> int:
    """`n`, checked: the request's sequences (prompts x n) within `limits.max_prompts`."""
    n = body.n or 1
    if prompts * n > limits.max_prompts:
        raise BadRequest(f"n = {n}: {prompts} prompt(s) x {n} choices is {prompts * n} sequences; the limit is "
                         f"{limits.max_prompts} per request", "n")
    return n


def with_choices(samplings: list[Sampling], n: int) -> list[Sampling]:
    """Each prompt's sampling repeated for its n choices (prompt-major, as OpenAI indexes them: prompt i's choice j
    is i * n + j), choice j seeded with `choice_seed(seed, j)`."""
    return [dataclasses.replace(s, seed=choice_seed(s.seed, j)) for s in samplings for j in range(n)]


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
        n = choices_of(body, len(prompts), limits)
        samplings = with_choices([_sampling_of(engine, limits, body, len(ids), body.max_tokens,
                                               COMPLETION_DEFAULT_TOKENS) for ids in prompts], n)
        if body.stream:
            if len(prompts) > 1 or body.echo or body.logprobs is not None:
                raise BadRequest("stream: streaming takes one prompt, without echo or logprobs", "stream")
            return _stream(ctx, request, prompts[0], samplings, chat=False, include_usage=_usage_on(body))
        results = await _unless_gone(ctx, request, _complete_all(engine, prompts, samplings, body.logprobs,
                                                                 body.echo))
        for _, gen in results:
            ctx.finished(gen)
        choices = [completion_choice(engine, i, gen, scores, body.echo, body.logprobs, samplings[i].stop)
                   for i, (scores, gen) in enumerate(results)]
        prompt_tokens = sum(len(ids) for ids in prompts)
        return JSONResponse(completion_body(engine, choices, [gen for _, gen in results], prompt_tokens))

    @router.post("/chat/completions", responses=GENERATION_RESPONSES)
    async def chat(body: ChatRequest, request: Request) -> Any:
        refuse_not_honoured(body)
        for name in ("max_tokens", "max_completion_tokens"):  # the second wins, but neither may pass the limit
            if (value := getattr(body, name)) is not None and value > limits.max_tokens:
                raise BadRequest(f"{name} = {value}: the limit is {limits.max_tokens} new tokens", name)
        ids = await asyncio.wrap_future(engine.tokenize(encode_chat, engine, body.messages, limits))
        n = choices_of(body, 1, limits)
        samplings = with_choices([_sampling_of(engine, limits, body, len(ids), body.requested_tokens)], n)
        if body.stream:
            return _stream(ctx, request, ids, samplings, chat=True, include_usage=_usage_on(body))
        gens = await _unless_gone(ctx, request, _await_all(_start_all(engine, [ids] * n, samplings, 0)))
        for gen in gens:
            ctx.finished(gen)
        return JSONResponse(chat_body(engine, gens, samplings[0].stop))

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
    """Every prompt's choices at once (they share the forward steps); `samplings`: n per prompt, prompt-major
    (`with_choices`). With echo + logprobs each prompt is scored by one forward pass on the worker thread; a greedy
    single new token (what lm-evaluation-harness asks for) is then read off that same pass."""
    n = len(samplings) // len(prompts)
    each = [ids for ids in prompts for _ in range(n)]
    if not (echo and top_n is not None):
        gens = await _await_all(_start_all(engine, each, samplings, top_n or 0))
        return [(None, gen) for gen in gens]
    results: list[tuple[PromptScores | None, Generation]] = []
    for p, ids in enumerate(prompts):
        choices = samplings[p * n : (p + 1) * n]
        start = time.perf_counter()
        scores = await asyncio.wrap_future(engine.submit(engine.prompt_logprobs, ids, top_n))
        sampling = choices[0]
        if sampling.max_tokens == 1 and sampling.greedy and not sampling.stop and not sampling.logit_bias:
            token = int(np.argmax(scores.next_logprobs))
            wall_s = time.perf_counter() - start
            tops = engine_top(scores.next_logprobs, top_n)
            finish = "stop" if token in engine.eos_token_ids else "length"
            gen = Generation(list(ids), [token], [float(scores.next_logprobs[token])], [tops], finish, wall_s, wall_s,
                             scores.summary)
            gens = [gen] * n  # greedy: every choice is the same token
        else:
            gens = await _await_all(_start_all(engine, [ids] * n, choices, top_n))
        results += [(scores, gen) for gen in gens]
    return results


def engine_top(logp: np.ndarray, n: int) -> dict[int, float]:
    if n <= 0:
        return {}
    order = np.argsort(-logp, kind="stable")[:n]
    return {int(i): float(logp[i]) for i in order}


@dataclass
class _ChoiceText:
    """What one streamed choice has sent: its tokens so far, the text out, and whether a stop string ended it."""

    stop: tuple[str, ...]
    tokens: list[int] = dataclasses.field(default_factory=list)
    sent: str = ""
    stopped: bool = False

    def add(self, engine: Engine, token: int) -> str:
        """The piece this token lets out (held back while it could still begin a stop string)."""
        self.tokens.append(token)
        text, self.stopped = cut_at_stop(engine.decode(self.tokens), self.stop)
        piece = sendable(text, self.sent, () if self.stopped else self.stop)
        self.sent += piece
        return piece

    def rest(self, engine: Engine, gen: Generation) -> str:
        """What was held back, now known not to be a stop string."""
        final, _ = cut_at_stop(engine.decode(gen.tokens), self.stop)
        return final[len(self.sent) :] if final.startswith(self.sent) else ""


def _stream(ctx: ServeContext, request: Request, ids: list[int], samplings: list[Sampling], chat: bool,
            include_usage: bool) -> StreamingResponse:
    """Start the generations (one per choice) now, so a full queue still answers 429, then stream their tokens as
    SSE, each chunk naming its choice's index."""
    engine = ctx.engine
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, int | None]] = asyncio.Queue()  # (choice, token), (choice, None): it ended

    def push(choice: int, item: int | None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (choice, item))

    def ended(choice: int, _future: Future[Generation]) -> None:
        push(choice, None)

    handles: list[Handle] = []
    try:
        for i, sampling in enumerate(samplings):
            handles.append(engine.start(ids, sampling, on_token=functools.partial(push, i)))
    except QueueFull:
        for handle in handles:
            handle.cancel()
        raise
    for i, handle in enumerate(handles):
        handle.future.add_done_callback(functools.partial(ended, i))
    request_id = new_id("chatcmpl" if chat else "cmpl")
    gone_seen = asyncio.Event()

    def gone() -> None:
        gone_seen.set()
        for handle in handles:
            handle.cancel()
        push(-1, None)  # wakes the stream, which then ends without waiting for the requests

    async def events() -> AsyncIterator[str]:
        watcher = asyncio.create_task(_watch_client(request, gone))
        texts = [_ChoiceText(s.stop) for s in samplings]
        running = len(handles)
        done = False
        try:
            if chat:
                for i in range(len(handles)):
                    yield sse(chunk(engine, request_id, chat, "", None, role=True, index=i))
            while running:
                i, token = await queue.get()
                if i < 0:
                    break
                if token is None:
                    running -= 1
                elif not texts[i].stopped:
                    if piece := texts[i].add(engine, token):
                        yield sse(chunk(engine, request_id, chat, piece, None, index=i))
                    if texts[i].stopped:
                        handles[i].cancel()
            if gone_seen.is_set():
                return
            try:
                gens = [await asyncio.wrap_future(h.future) for h in handles]
            except Exception as exc:  # the 200 and some tokens are out: the error becomes the stream's last event
                yield _stream_error(ctx, exc)
                yield "data: [DONE]\n\n"
                return
            for i, (text, gen) in enumerate(zip(texts, gens, strict=True)):
                ctx.finished(gen)
                if rest := text.rest(engine, gen):
                    yield sse(chunk(engine, request_id, chat, rest, None, index=i))
                finish = "stop" if text.stopped else gen.finish_reason
                yield sse(chunk(engine, request_id, chat, None if chat else "", finish, index=i))
            if include_usage:
                body = (completion_body(engine, [], gens, len(ids)) if not chat
                        else chat_body(engine, gens, samplings[0].stop))
                yield sse({"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": body["created"], "model": engine.name, "choices": [],
                           "usage": body["usage"], "wdmoe": body["wdmoe"]})
            yield "data: [DONE]\n\n"
            done = True
        finally:  # normal end, or the client gone (seen by the watcher, or the stream cancelled by the server)
            watcher.cancel()
            if gone_seen.is_set() or not (done or all(h.future.done() for h in handles)):
                ctx.metrics.cancelled.inc()
            for handle in handles:
                handle.cancel()  # retire the requests at the next step (nothing for those already finished)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _stream_error(ctx: ServeContext, exc: Exception) -> str:
    """The SSE event of a generation that failed mid-stream (OpenAI's error shape, as its API streams errors)."""
    if isinstance(exc, DevicesUnavailable):
        ctx.metrics.requests_failed.labels(reason="devices_unavailable").inc()
        return sse(devices_error(exc))
    logging.getLogger(__name__).error("a streamed generation failed", exc_info=exc)
    ctx.metrics.requests_failed.labels(reason="internal_error").inc()
    return sse(internal_error(exc))
