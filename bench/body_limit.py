"""How long `wdmoe serve` takes to refuse a 30 MB prompt (413, before parsing or tokenizing), while a normal request
runs beside it; side by side with the same server answering a small bad request (400). Raw sockets, so the time is
the server's and the kernel's, not an HTTP client's.

    python bench/body_limit.py [--mb 30] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _post_raw(host: str, port: int, body: bytes, expect: bool = False) -> tuple[str, float]:
    """Send one POST /v1/completions; the status line and the seconds from the first byte sent to it. With
    `expect`, as curl does for large bodies: the headers with "Expect: 100-continue", the body only after a 100."""
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'Expect: 100-continue' + chr(13) + chr(10) if expect else ''}\r\n"
            ).encode()
    with socket.create_connection((host, port), timeout=60) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        answer = sock.recv(256).decode(errors="replace") if expect else ""
        if not expect or answer.startswith("HTTP/1.1 100"):
            sock.sendall(body)
            answer = sock.recv(256).decode(errors="replace")
        took = time.perf_counter() - start
    return answer.split("\r\n", 1)[0], took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tests.integration.serve.conftest import LIMITS, char_tokenizer, load_engine

    from wdmoe.model.tiny import tiny_model
    from wdmoe.serve import create_app
    from wdmoe.serve.server import serve_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hf"
        tiny_model("mixtral", seed=3).save_pretrained(out)
        char_tokenizer().save_pretrained(out)
        engine = load_engine(out)
        huge = b'{"prompt": "' + b"a" * int(args.mb * 1e6) + b'", "max_tokens": 2}'
        small_bad = b'{"prompt": "", "max_tokens": 2}'
        with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
            host, port = url.removeprefix("http://").split(":")
            refusals, expect_refusals, bad, normal_ok = [], [], [], []
            for _ in range(args.repeats):
                done: dict[str, int] = {}
                normal = threading.Thread(target=lambda done=done: done.update(status=httpx.post(
                    f"{url}/v1/completions", json={"prompt": "fine", "max_tokens": 8, "temperature": 0},
                    timeout=120).status_code))
                normal.start()
                status, took = _post_raw(host, int(port), huge)
                assert status.startswith("HTTP/1.1 413"), status
                refusals.append(took)
                status, took = _post_raw(host, int(port), huge, expect=True)
                assert status.startswith("HTTP/1.1 413"), status
                expect_refusals.append(took)
                status, took = _post_raw(host, int(port), small_bad)
                assert status.startswith("HTTP/1.1 400"), status
                bad.append(took)
                normal.join()
                normal_ok.append(done.get("status") == 200)
        engine.close()
        engine.model.close()
    report = {"body_mb": args.mb, "repeats": args.repeats,
              "refusal_ms_median": 1e3 * statistics.median(refusals), "refusal_ms_max": 1e3 * max(refusals),
              "refusal_expect_100_ms_median": 1e3 * statistics.median(expect_refusals),
              "small_400_ms_median": 1e3 * statistics.median(bad), "normal_requests_ok": all(normal_ok)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{args.mb:g} MB prompt refused (413) in {report['refusal_ms_median']:.1f} ms median "
              f"(max {report['refusal_ms_max']:.1f}) sent whole, read and dropped; in "
              f"{report['refusal_expect_100_ms_median']:.1f} ms with Expect: 100-continue (curl); a small bad "
              f"request (400) in "
              f"{report['small_400_ms_median']:.1f} ms; normal requests beside it all answered: "
              f"{report['normal_requests_ok']}")


if __name__ == "__main__":
    main()
