"""OpenAI response bodies built from `Generation`s: choices, logprobs objects, usage, SSE chunks.

Every body carries a `wdmoe` object (an extension OpenAI clients ignore) with the radio model's figures for that
request: bytes on air, energy, modeled TTFT/TPOT. `wdmoe bench` reads it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from wdmoe.serve.engine import Engine, Generation, PromptScores


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, the body of every error answer (400, 401, 413, 429, 503...)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


RETRY_AFTER_S = 5  # what a 503 for lost devices asks the client to wait before retrying, in seconds


def devices_error(exc: Exception) -> dict[str, Any]:
    """The error of a request the devices could not run (every device lost): a 503's body, or a stream's last
    event before `[DONE]`."""
    return error_body(str(exc), "server_error", code="devices_unavailable")


def internal_error(exc: Exception) -> dict[str, Any]:
    """A stream's last event before `[DONE]` when the generation raised something unexpected (a bug)."""
    return error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop string, and whether one occurred."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many characters at the end of `text` could still begin a stop string (the longest tail of `text` that
    is a proper prefix of one): a stream holds them back until the next tokens tell."""
    longest = 0
    for s in stop:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


def sendable(text: str, sent: str, stop: tuple[str, ...]) -> str:
    """The part of a stream's text (`text`, already cut at any stop string) that may be sent after `sent`: none of
    what could still begin a stop string, no half-decoded character, nothing if the decoding changed `sent`."""
    ready = text[: len(text) - held_back(text, stop)]
    if ready.endswith("\ufffd") or not ready.startswith(sent):
        return ""
    return ready[len(sent) :]


def radio_report(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The `wdmoe` extension: totals over the prompts of one request (None where the radio model is off)."""
    modeled = [s for s in summaries if "latency" in s]
    report: dict[str, Any] = {
        "bytes_on_air": sum(s["bytes_on_air"] for s in modeled) if modeled else None,
        "energy_j": sum(s["energy_j"] for s in modeled) if modeled else None,
        "modeled_ttft_s": modeled[0]["latency"]["ttft_s"] if modeled else None,
        "modeled_tpot_s": modeled[0]["latency"]["tpot_s"] if modeled else None,
    }
    kept = [s["experts_per_token_mean"] for s in summaries if s.get("experts_per_token_mean")]
    report["experts_per_token"] = sum(kept) / len(kept) if kept else None
    return report


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(engine: Engine, index: int, gen: Generation, scores: PromptScores | None, echo: bool,
                      top_n: int | None, stop: tuple[str, ...]) -> dict[str, Any]:
    """One /v1/completions choice; with `echo` the prompt's tokens (and their logprobs) come first."""
    completion, prompt_text = engine.decode(gen.tokens), ""
    if echo:
        prompt_text, completion = split_echo(engine.decode, gen.prompt_ids, gen.tokens)
    text, stopped = cut_at_stop(completion, stop)
    finish = "stop" if stopped else gen.finish_reason
    text = prompt_text + text
    logprobs = None
    if top_n is not None:
        with_prompt = echo and scores is not None
        ids = (gen.prompt_ids if with_prompt else []) + gen.tokens
        token_lps: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        if scores is not None and with_prompt:
            token_lps = [None, *scores.logprobs]
            tops = [None, *(_named(engine, t) for t in scores.top_logprobs)]
        token_lps += gen.logprobs
        tops += [_named(engine, t) for t in gen.top_logprobs]
        strings = [engine.token_text(i) for i in ids]
        offsets = text_offsets(engine.decode, ids)
        logprobs = {"tokens": strings, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}


def split_echo(decode: Callable[[list[int]], str], prompt_ids: list[int], tokens: list[int]) -> tuple[str, str]:
    """(prompt text, completion text) such that their concatenation is the decoding of prompt + completion: the
    completion decoded alone can lose the separator (a space between token ids, a word-initial space)."""
    prompt_text, joined = decode(prompt_ids), decode(prompt_ids + tokens)
    if joined.startswith(prompt_text):
        return prompt_text, joined[len(prompt_text):]
    return prompt_text, decode(tokens)


def text_offsets(decode: Callable[[list[int]], str], ids: list[int]) -> list[int]:
    """Each token's character offset in decode(ids): where the decoded text of the tokens before it stops agreeing
    with the whole (a character split over several byte-level tokens starts at the same offset for each of them)."""
    whole = decode(ids)
    return [_agreeing_chars(decode(ids[:i]), whole) for i in range(len(ids))]


def _agreeing_chars(prefix: str, whole: str) -> int:
    n = min(len(prefix), len(whole))
    return next((i for i in range(n) if prefix[i] != whole[i]), n)


def _named(engine: Engine, top: dict[int, float]) -> dict[str, float]:
    named: dict[str, float] = {}
    for token, logprob in top.items():
        named.setdefault(engine.token_text(token), logprob)
    return named


def completion_body(engine: Engine, choices: list[dict[str, Any]], gens: list[Generation],
                    prompt_tokens: int) -> dict[str, Any]:
    """A /v1/completions body; `usage` counts each prompt once (`prompt_tokens`) and every choice's new tokens."""
    return {
        "id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": engine.name,
        "choices": choices,
        "usage": usage(prompt_tokens, sum(len(g.tokens) for g in gens)),
        "wdmoe": radio_report([g.summary for g in gens]),
    }


def chat_body(engine: Engine, gens: list[Generation], stop: tuple[str, ...]) -> dict[str, Any]:
    """A chat body with one choice per generation (`n`, all of the same prompt: counted once in `usage`)."""
    choices = []
    for index, gen in enumerate(gens):
        text, stopped = cut_at_stop(engine.decode(gen.tokens), stop)
        choices.append({"index": index, "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop" if stopped else gen.finish_reason})
    return {
        "id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": engine.name,
        "choices": choices,
        "usage": usage(len(gens[0].prompt_ids), sum(len(g.tokens) for g in gens)),
        "wdmoe": radio_report([g.summary for g in gens]),
    }


def chunk(engine: Engine, request_id: str, chat: bool, text: str | None, finish: str | None,
          role: bool = False, index: int = 0) -> dict[str, Any]:
    """One SSE chunk of choice `index`: a chat delta or a completion text piece."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
    else:
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
    return {"id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": engine.name, "choices": [choice]}
