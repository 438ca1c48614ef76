"""Prompts to token ids, checked against the model and the limits; a bad one raises `BadRequest` (HTTP 400).

A model without a tokenizer (the random fallback model) takes token ids: a JSON list of ints, or text of
integers separated by spaces or commas ("1 2 3"); its answers are the new ids joined by spaces.
"""

from __future__ import annotations

from typing import Any

from wdmoe.serve.engine import Engine, Sampling
from wdmoe.serve.schemas import ChatMessage, Limits

FALLBACK_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}<|assistant|>\n"


class BadRequest(ValueError):
    """The request is well-formed JSON but asks for something this server cannot do; `param` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_text_length(engine: Engine, text_chars: int, limits: Limits, param: str) -> None:
    """Refuse, before tokenizing, a text that cannot fit: more characters than `max_prompt_tokens` tokens can cover
    (`Engine.max_token_chars` per token), or, without a tokenizer, than that many ids can be written in."""
    per_token = engine.max_token_chars or len(str(engine.vocab_size)) + 2  # "1234, "
    most = limits.max_prompt_tokens * per_token
    if text_chars > most:
        raise BadRequest(f"{param}: the prompt has {text_chars} characters, more than {limits.max_prompt_tokens} "
                         f"tokens (the limit) can hold ({most} characters); send a shorter prompt", param)


def encode_text(engine: Engine, text: str, param: str, limits: Limits, special_tokens: bool = False) -> list[int]:
    check_text_length(engine, len(text), limits, param)
    if engine.tokenizer is not None:
        return list(engine.tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    try:
        return [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise BadRequest(
            f"{param}: this model has no tokenizer; send token ids (a list of ints, or text like '1 2 3'), "
            f"not {text[:40]!r}",
            param,
        ) from None


def encode_prompts(engine: Engine, prompt: str | list[Any], limits: Limits) -> list[list[int]]:
    """The prompts of a /v1/completions body as token-id lists, each checked."""
    if isinstance(prompt, str):
        batches: list[list[int]] = [encode_text(engine, prompt, "prompt", limits)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) > limits.max_prompts:
            raise BadRequest(f"prompt: {len(prompt)} prompts in one request; the limit is {limits.max_prompts}",
                             "prompt")
        batches = [encode_text(engine, p, f"prompt[{i}]", limits) for i, p in enumerate(prompt)]
    elif prompt and all(isinstance(p, list) for p in prompt):
        batches = [list(p) for p in prompt]
    else:
        batches = [list(prompt)]
    if len(batches) > limits.max_prompts:
        raise BadRequest(f"prompt: {len(batches)} prompts in one request; the limit is {limits.max_prompts}", "prompt")
    for ids in batches:
        check_ids(engine, ids, limits, "prompt")
    return batches


def encode_chat(engine: Engine, messages: list[ChatMessage], limits: Limits, check: bool = True) -> list[int]:
    """The conversation rendered by the tokenizer's chat template (or a plain one) and tokenized; `check`: refuse
    ids a prompt cannot have (none, or more than the limit)."""
    check_text_length(engine, sum(len(m.text) for m in messages), limits, "messages")
    if engine.tokenizer is None:
        ids = [i for n, m in enumerate(messages) for i in encode_text(engine, m.text, f"messages[{n}].content", limits)]
    else:
        turns = [{"role": m.role, "content": m.text} for m in messages]
        template = None if getattr(engine.tokenizer, "chat_template", None) else FALLBACK_TEMPLATE
        text = engine.tokenizer.apply_chat_template(
            turns, chat_template=template, add_generation_prompt=True, tokenize=False
        )
        ids = list(engine.tokenizer(text, add_special_tokens=False)["input_ids"])
    if check:
        check_ids(engine, ids, limits, "messages")
    return ids


def check_ids(engine: Engine, ids: list[int], limits: Limits, param: str) -> None:
    if not ids:
        raise BadRequest(f"{param}: the prompt is empty; give at least one token", param)
    check_vocabulary(engine, ids, param)
    longest = min(limits.max_prompt_tokens, engine.context_length - 1)
    if len(ids) > longest:
        raise BadRequest(f"{param}: the prompt has {len(ids)} tokens; the limit is {longest} tokens", param)


def check_vocabulary(engine: Engine, ids: list[int], param: str) -> None:
    bad = next((i for i in ids if not 0 <= i < engine.vocab_size), None)
    if bad is not None:
        raise BadRequest(f"{param}: token id {bad} is outside the vocabulary 0..{engine.vocab_size - 1}", param)


def tokenize(engine: Engine, prompt: str | None, messages: list[ChatMessage] | None, special_tokens: bool,
             limits: Limits) -> list[int]:
    """POST /tokenize: the ids of `prompt` (as /v1/completions encodes it) or of `messages` (as the chat route
    renders and encodes them), counted even beyond the prompt limit."""
    if (prompt is None) == (messages is None):
        raise BadRequest("give exactly one of prompt (text) or messages (a conversation)", "prompt")
    if prompt is not None:
        return encode_text(engine, prompt, "prompt", limits, special_tokens)
    return encode_chat(engine, messages or [], limits, check=False)


def sampling_for(engine: Engine, limits: Limits, prompt_len: int, max_tokens: int | None, temperature: float,
                 top_p: float, seed: int | None, stop: str | list[str] | None, default_tokens: int | None = None,
                 ignore_eos: bool = False, presence_penalty: float | None = None,
                 frequency_penalty: float | None = None, logit_bias: dict[str, float] | None = None) -> Sampling:
    """Sampling settings, with `max_tokens` checked against the limit and the room left in the context; an
    omitted `max_tokens` is `default_tokens` (None: as many as allowed), lowered to what the limits allow."""
    room = engine.context_length - prompt_len
    allowed = min(limits.max_tokens, room)
    wanted = min(allowed, default_tokens or allowed) if max_tokens is None else max_tokens
    if wanted > limits.max_tokens:
        raise BadRequest(f"max_tokens = {wanted}: the limit is {limits.max_tokens} new tokens", "max_tokens")
    if wanted > room:
        raise BadRequest(
            f"max_tokens = {wanted}: the prompt has {prompt_len} tokens and the context {engine.context_length}, "
            f"so at most {room} new tokens fit",
            "max_tokens",
        )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return Sampling(wanted, temperature, top_p, seed, tuple(s for s in stops if s),
                    presence_penalty=presence_penalty or 0.0, frequency_penalty=frequency_penalty or 0.0,
                    logit_bias=bias_pairs(engine, logit_bias), ignore_eos=ignore_eos)


def bias_pairs(engine: Engine, bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's `logit_bias` ({"token id": bias}) as (token, bias) pairs, each id checked against the vocabulary."""
    pairs: list[tuple[int, float]] = []
    for key, value in (bias or {}).items():
        token = int(key) if key.strip().isdigit() else -1
        if not 0 <= token < engine.vocab_size:
            raise BadRequest(f"logit_bias: key {key!r} is not a token id of the vocabulary 0..{engine.vocab_size - 1}",
                             "logit_bias")
        pairs.append((token, float(value)))
    return tuple(pairs)
