"""The server's pure pieces, checked by hand-computed cases: stop-string cuts, SSE framing, usage, the radio
report of a request, and the load benchmark's summary (counts, throughput, percentiles, TPOT)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wdmoe.model.shipped import SHIPPED_DIR
from wdmoe.serve.bench import RequestResult, make_prompts, summarize_bench
from wdmoe.serve.responses import cut_at_stop, radio_report, split_echo, sse, text_offsets, usage


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("a cat sat. it is done", ("it is",), ("a cat sat. ", True)),
        ("one two three", ("three", "two"), ("one ", True)),  # the earliest stop wins, not the first listed
        ("no stop here", ("xyz",), ("no stop here", False)),
        ("", ("a",), ("", False)),
        ("stop at start", ("stop",), ("", True)),
    ],
)
def test_cut_at_stop(text: str, stop: tuple[str, ...], expected: tuple[str, bool]) -> None:
    assert cut_at_stop(text, stop) == expected


def test_sse_frames_one_json_object() -> None:
    frame = sse({"a": [1, "x"]})

    assert frame.startswith("data: ") and frame.endswith("\n\n")
    assert json.loads(frame[len("data: "):]) == {"a": [1, "x"]}


def test_usage_totals() -> None:
    assert usage(7, 5) == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_radio_report_sums_modeled_prompts_and_is_none_without_radio() -> None:
    modeled = {"latency": {"ttft_s": 0.5, "tpot_s": 0.1}, "bytes_on_air": 100.0, "energy_j": 2.0,
               "experts_per_token_mean": 2.0}
    second = {"latency": {"ttft_s": 0.7, "tpot_s": 0.2}, "bytes_on_air": 50.0, "energy_j": 1.0,
              "experts_per_token_mean": 1.0}

    both = radio_report([modeled, second])
    off = radio_report([{"experts_per_token_mean": 2.0}])

    assert both == {"bytes_on_air": 150.0, "energy_j": 3.0, "modeled_ttft_s": 0.5, "modeled_tpot_s": 0.1,
                    "experts_per_token": 1.5}
    assert off["bytes_on_air"] is None and off["modeled_ttft_s"] is None and off["experts_per_token"] == 2.0


def _result(ok: bool, tokens: int, ttft: float, e2e: float, air: float | None = None) -> RequestResult:
    return RequestResult(ok, None if ok else "HTTP 500", 4, tokens, ttft, e2e, air, None if air is None else 1.0)


def test_summarize_bench_counts_only_successful_requests() -> None:
    results = [_result(True, 5, 0.1, 0.5, air=80.0), _result(True, 1, 0.2, 0.2), _result(False, 0, 0.0, 0.0)]

    report = summarize_bench(results, duration_s=2.0)

    assert (report["requests"], report["successful"], report["failed"]) == (3, 2, 1)
    assert report["errors"] == ["HTTP 500"]
    assert report["output_tokens"] == 6 and report["input_tokens"] == 8
    assert report["output_tokens_per_s"] == pytest.approx(3.0)
    assert report["request_throughput_per_s"] == pytest.approx(1.0)
    assert report["tpot_s"]["mean"] == pytest.approx((0.5 - 0.1) / 4)  # one request has > 1 token
    assert report["ttft_s"]["p50"] == pytest.approx(float(np.percentile([0.1, 0.2], 50)))
    assert report["bytes_on_air_per_token"] == pytest.approx(80.0 / 5)  # only requests with radio figures


def test_summarize_bench_of_nothing_has_no_rates() -> None:
    report = summarize_bench([], duration_s=0.0)

    assert report["output_tokens_per_s"] is None and report["ttft_s"]["mean"] is None


def test_make_prompts_is_seeded_and_within_bounds() -> None:
    prompts = make_prompts(20, vocab=50, prompt_len=10, seed=3)

    assert prompts == make_prompts(20, vocab=50, prompt_len=10, seed=3)
    assert prompts != make_prompts(20, vocab=50, prompt_len=10, seed=4)
    assert all(5 <= len(p) <= 10 and all(1 <= t < 50 for t in p) for p in prompts)


def _ids_decode(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)  # the server's decoding for a model without a tokenizer


def test_echo_of_token_id_prompts_keeps_the_separator() -> None:
    prompt_text, completion = split_echo(_ids_decode, [1, 2], [348, 42])

    assert prompt_text + completion == "1 2 348 42"
    assert completion == " 348 42"


def test_text_offsets_index_the_text_also_for_characters_split_over_byte_tokens() -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    text = "Café ünïcode: 東京 naïve — ok"
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    whole = decode(ids)
    offsets = text_offsets(decode, ids)

    assert whole == text
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(whole)
    split = 0
    for i, token in enumerate(ids):
        piece = decode([token])
        if "\ufffd" in piece:  # part of a multi-byte character: it starts where that character starts
            split += 1
            assert whole[offsets[i]] not in "\ufffd" and ord(whole[offsets[i]]) > 127
        else:
            assert whole[offsets[i]:].startswith(piece), (i, piece)
    assert split > 0  # the text really has characters that byte-level BPE splits
