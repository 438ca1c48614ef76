"""Hostile peers on a device's direct socket (127.0.0.1): slow handshakes, floods of connections or bytes, a
listener out of file descriptors, and an authenticated peer that announces a frame larger than it should.

Each case is one an attacker on the device network can try without the key (or, for the last, with a device's
key); each test bounds its own time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import multiprocessing as mp
import os
import resource
import socket
import struct
import threading
import time
import tracemalloc

import pytest

from wdmoe.backends.direct import HELLO, MAX_FRAME, NONCE_BYTES, DirectLink, DirectServer, direct_round

KEY = bytes(range(32))
DEVICE = 3


def echo(batch: bytearray) -> bytes:
    return bytes(batch[::-1])


def closed_within(sock: socket.socket, timeout_s: float, trickle_s: float | None = None) -> float | None:
    """Seconds until the server closes `sock` (None: still open after `timeout_s`); with `trickle_s`, one byte is
    sent every `trickle_s` seconds meanwhile, as a slow-loris client does."""
    start = time.monotonic()
    sock.settimeout(trickle_s or timeout_s)
    while time.monotonic() - start < timeout_s:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - start
        if trickle_s is not None:
            try:
                sock.send(b"x")
            except OSError:
                return time.monotonic() - start
    return None


def test_a_slow_loris_handshake_is_cut_at_the_total_deadline_not_kept_alive_by_each_byte() -> None:
    server = DirectServer(echo, KEY, DEVICE, "127.0.0.1", handshake_timeout_s=0.6)
    with socket.create_connection(server.address) as sock:
        took = closed_within(sock, timeout_s=5.0, trickle_s=0.1)  # 64 bytes needed: 6.4 s of trickling
    assert took is not None and took < 2.0, f"a handshake trickling a byte every 0.1 s stayed open {took} s"
    assert server.refused == 1
    server.close()


def test_a_flood_of_idle_connections_takes_no_thread_beyond_the_cap_and_the_bs_still_connects() -> None:
    server = DirectServer(echo, KEY, DEVICE, "127.0.0.1", max_pending=8)
    link = DirectLink(server.address, KEY, DEVICE)
    before = threading.active_count()
    flood = [socket.create_connection(server.address) for _ in range(300)]
    try:
        time.sleep(0.5)  # let the listener accept (and evict) what it will
        assert threading.active_count() <= before + 8  # 300 idle connections would have been 300 threads
        for n in range(5):  # the authenticated connection is untouched by the flood
            raw, lost = direct_round({DEVICE: link}, {DEVICE: b"abc%d" % n}, timeout_s=5.0)
            assert lost == {} and raw == {DEVICE: (b"abc%d" % n)[::-1]}
        fresh = DirectLink(server.address, KEY, DEVICE, timeout_s=5.0)  # a new link (a rejoin) while it lasts
        assert direct_round({DEVICE: fresh}, {DEVICE: b"xyz"}, timeout_s=5.0) == ({DEVICE: b"zyx"}, {})
        assert threading.active_count() <= before + 8 + 1  # + the new link's serving thread
        assert server.refused >= 300 - 8
    finally:
        for sock in flood:
            sock.close()
    server.close()


def test_a_flood_of_bytes_without_the_key_is_refused_and_never_reaches_the_handler() -> None:
    seen: list[int] = []

    def handler(batch: bytearray) -> bytes:
        seen.append(len(batch))
        return b""

    server = DirectServer(handler, KEY, DEVICE, "127.0.0.1")
    with socket.create_connection(server.address) as sock:
        sock.settimeout(5.0)
        with contextlib.suppress(OSError):  # the server closes the connection after the reply's 64 bytes
            for _ in range(64):
                sock.sendall(os.urandom(1 << 16))
        assert closed_within(sock, timeout_s=5.0) is not None
    assert seen == [] and server.refused == 1
    server.close()


def serve_with_few_descriptors(address: mp.Queue, spare: int) -> None:  # type: ignore[type-arg]
    """A device whose process may open only `spare` more file descriptors (the EMFILE case)."""
    server = DirectServer(echo, KEY, DEVICE, "127.0.0.1", handshake_timeout_s=1.0)
    address.put(server.address)
    address.close()
    address.join_thread()
    open_now = len(os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + spare, hard))
    time.sleep(120)


def test_the_listener_survives_running_out_of_file_descriptors() -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=serve_with_few_descriptors, args=(queue, 3), daemon=True)
    proc.start()
    try:
        address = queue.get(timeout=30)
        time.sleep(0.3)  # the child lowers its limit
        idle = [socket.create_connection(address) for _ in range(12)]  # more than its 3 spare descriptors
        time.sleep(1.0)  # its accept hits EMFILE meanwhile
        for sock in idle:
            sock.close()
        link = DirectLink(address, KEY, DEVICE, timeout_s=10.0)  # before the fix: no thread accepts any more
        assert direct_round({DEVICE: link}, {DEVICE: b"still here"}, timeout_s=5.0) == (
            {DEVICE: b"ereh llits"}, {})
        link.close()
    finally:
        proc.kill()
        proc.join()


def fake_device(announce: int) -> tuple[socket.socket, threading.Thread]:
    """A peer that holds the device's key, passes the handshake, then answers every batch with a header announcing
    `announce` bytes (and sends none of them)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        conn, _ = listener.accept()
        with conn:
            ours = os.urandom(NONCE_BYTES)
            conn.sendall(HELLO + ours)
            reply = b""
            while len(reply) < NONCE_BYTES + 32:
                reply += conn.recv(NONCE_BYTES + 32 - len(reply))
            theirs = reply[:NONCE_BYTES]
            msg = b"%s|%d|%s|%s" % (b"server", DEVICE, theirs, ours)
            conn.sendall(hmac.new(KEY, msg, hashlib.sha256).digest())
            (length,) = struct.unpack("<q", conn.recv(8))
            while length > 0:
                length -= len(conn.recv(min(length, 1 << 16)))
            conn.sendall(struct.pack("<q", announce))
            conn.recv(1)  # hold the connection until the BS closes it

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread


@pytest.mark.parametrize("announce", [MAX_FRAME, 4096])
def test_an_answer_longer_than_the_batchs_result_is_refused_before_allocating(announce: int) -> None:
    listener, thread = fake_device(announce)
    link = DirectLink(listener.getsockname()[:2], KEY, DEVICE)
    tracemalloc.start()
    try:
        start = time.monotonic()
        raw, lost = direct_round({DEVICE: link}, {DEVICE: b"batch"}, timeout_s=5.0, expected={DEVICE: 128})
        took = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        link.close()
        listener.close()
    assert raw == {} and f"announced an answer of {announce} bytes" in lost[DEVICE] and "has 128" in lost[DEVICE]
    assert peak < 1 << 20  # not 2 GiB, nor the 4 KiB frame's bytes waited for
    assert took < 2.0  # refused at the header, not at the deadline
    thread.join(timeout=5.0)
