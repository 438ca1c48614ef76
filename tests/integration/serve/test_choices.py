"""`n` choices through the official `openai` client against a real uvicorn server on 127.0.0.1: n sequences, each
sampled on its own (choice j with `choice_seed(seed, j)`), equal to the same requests run alone, streamed and not;
greedy choices all alike; `usage` counts the prompt once."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import openai
import pytest

from tests.integration.serve.conftest import LIMITS
from wdmoe.serve import Engine, create_app
from wdmoe.serve.engine import Generation, Sampling, choice_seed
from wdmoe.serve.prompts import encode_chat
from wdmoe.serve.schemas import ChatMessage
from wdmoe.serve.server import serve_in_thread

N = 3
SEED = 1234
TOKENS = 10


@pytest.fixture(scope="module")
def client(engine: Engine) -> Iterator[openai.OpenAI]:
    with serve_in_thread(create_app(engine, limits=replace(LIMITS, max_prompts=4))) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


def alone(engine: Engine, ids: list[int], seed: int | None, temperature: float = 1.0,
          tokens: int = TOKENS) -> list[Generation]:
    """Each choice as the engine gives it to that choice's request alone."""
    return [engine.generate(ids, Sampling(tokens, temperature, seed=choice_seed(seed, j))) for j in range(N)]


def texts_of(engine: Engine, gens: list[Generation]) -> list[str]:
    return [engine.decode(g.tokens) for g in gens]


def streamed_texts(stream: openai.Stream, chat: bool) -> tuple[list[str], list[str | None], int | None]:
    """(text per choice index, finish_reason per index, completion tokens of the usage chunk)."""
    texts, finishes, completion_tokens = [""] * N, [None] * N, None
    for event in stream:
        if event.usage is not None:
            completion_tokens = event.usage.completion_tokens
        for choice in event.choices:
            piece = (choice.delta.content if chat else choice.text) or ""  # type: ignore[union-attr]
            texts[choice.index] += piece
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    return texts, finishes, completion_tokens


def test_completion_choices_are_seeded_sequences_streamed_or_not(client: openai.OpenAI, engine: Engine) -> None:
    ids = list(engine.tokenizer("choose", add_special_tokens=False)["input_ids"])
    kwargs = {"model": engine.name, "prompt": "choose", "max_tokens": TOKENS, "temperature": 1.0, "seed": SEED, "n": N}

    first = client.completions.create(**kwargs)
    again = client.completions.create(**kwargs)
    stream = client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    texts, finishes, streamed_tokens = streamed_texts(stream, chat=False)

    expected = texts_of(engine, alone(engine, ids, SEED))
    assert [c.index for c in first.choices] == list(range(N))
    assert [c.text for c in first.choices] == expected == [c.text for c in again.choices] == texts
    assert len(set(expected)) > 1  # each choice draws its own tokens
    assert finishes == [c.finish_reason for c in first.choices] == ["length"] * N
    assert first.usage is not None
    assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (len(ids), N * TOKENS)
    assert streamed_tokens == N * TOKENS


def test_chat_choices_are_seeded_sequences_streamed_or_not(client: openai.OpenAI, engine: Engine) -> None:
    messages = [{"role": "user", "content": "pick"}]
    kwargs = {"model": engine.name, "messages": messages, "max_tokens": TOKENS, "temperature": 1.0, "seed": SEED,
              "n": N}

    plain = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    stream = client.chat.completions.create(**kwargs, stream=True)  # type: ignore[call-overload]
    texts, finishes, _ = streamed_texts(stream, chat=True)

    ids = encode_chat(engine, [ChatMessage(role="user", content="pick")], LIMITS)
    gens = alone(engine, ids, SEED)
    assert [c.message.content for c in plain.choices] == texts == texts_of(engine, gens) and len(set(texts)) > 1
    assert plain.usage is not None and plain.usage.prompt_tokens == len(ids)
    assert plain.usage.completion_tokens == sum(len(g.tokens) for g in gens)
    assert [c.index for c in plain.choices] == list(range(N))
    assert finishes == [c.finish_reason for c in plain.choices]


def test_greedy_choices_are_all_alike(client: openai.OpenAI, engine: Engine) -> None:
    plain = client.completions.create(model=engine.name, prompt="same", max_tokens=TOKENS, temperature=0, n=N)
    stream = client.completions.create(model=engine.name, prompt="same", max_tokens=TOKENS, temperature=0, n=N,
                                       stream=True)
    texts, _, _ = streamed_texts(stream, chat=False)

    ids = list(engine.tokenizer("same", add_special_tokens=False)["input_ids"])
    assert [c.text for c in plain.choices] == texts == texts_of(engine, alone(engine, ids, None, temperature=0))
    assert len(set(texts)) == 1


def test_choices_of_several_prompts_are_prompt_major_and_bounded(client: openai.OpenAI, engine: Engine) -> None:
    answer = client.completions.create(model=engine.name, prompt=["ab", "cde"], max_tokens=2, temperature=0, n=2)
    url = str(client.base_url).rstrip("/")
    too_many = httpx.post(f"{url}/completions", json={"prompt": ["ab", "cd", "ef"], "n": 2}, timeout=60)

    each = [texts_of(engine, alone(engine, list(engine.tokenizer(p, add_special_tokens=False)["input_ids"]), None,
                                   temperature=0, tokens=2))[0] for p in ("ab", "cde")]
    assert [c.index for c in answer.choices] == [0, 1, 2, 3]
    assert [c.text for c in answer.choices] == [each[0], each[0], each[1], each[1]]
    assert answer.usage is not None and answer.usage.prompt_tokens == len("ab") + len("cde")
    assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "n"
    assert "3 prompt(s) x 2 choices is 6 sequences; the limit is 4" in too_many.json()["error"]["message"]
