"""The direct transport's socket layer on 127.0.0.1: frames, mutual authentication, errors, lost and silent peers."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import struct
import time

import pytest

from wdmoe.backends.direct import (
    DIRECT_PORTS_ENV,
    HELLO,
    MAX_FRAME,
    NONCE_BYTES,
    DeviceCodeError,
    DirectError,
    DirectLink,
    DirectServer,
    _recv_length,
    direct_round,
    parse_ports,
)

KEY = bytes(range(32))


def reverse(batch: bytearray) -> bytes:
    if batch == b"boom":
        raise ValueError("the device's code raised")
    if batch.startswith(b"sleep"):
        time.sleep(float(batch[5:]))
    return bytes(batch[::-1])


@pytest.fixture()
def server() -> DirectServer:
    return DirectServer(reverse, KEY, device=3, host="127.0.0.1")


def test_a_round_trip_returns_the_handlers_answer_for_every_device(server: DirectServer) -> None:
    other = DirectServer(lambda b: bytes(b) * 2, KEY, device=4, host="127.0.0.1")
    links = {3: DirectLink(server.address, KEY, 3), 4: DirectLink(other.address, KEY, 4)}
    payload = os.urandom(8192)
    for _ in range(3):  # the connection is reused round after round
        raw, lost = direct_round(links, {3: payload, 4: b"ab"}, timeout_s=5.0)
        assert lost == {}
        assert raw == {3: payload[::-1], 4: b"abab"}
    assert server.refused == 0


def test_frames_larger_than_the_socket_buffers_arrive_whole(server: DirectServer) -> None:
    links = {3: DirectLink(server.address, KEY, 3)}
    payload = os.urandom(24 * 1024 * 1024)  # a prefill batch's size: the kernel takes it in many parts
    raw, lost = direct_round(links, {3: payload}, timeout_s=60.0)
    assert lost == {} and raw[3] == payload[::-1]


def test_a_client_without_the_key_is_disconnected_and_never_reaches_the_handler() -> None:
    calls: list[bytes] = []
    server = DirectServer(lambda b: calls.append(bytes(b)) or b"x", KEY, device=3, host="127.0.0.1")
    with pytest.raises(DirectError, match="refused the handshake"):
        DirectLink(server.address, bytes(32), 3)
    with pytest.raises(DirectError, match="refused the handshake"):
        DirectLink(server.address, KEY, 5)  # the right key for another device: not this one's
    # a raw client that skips the handshake and sends a frame at once is cut off, unanswered
    with socket.create_connection(server.address, timeout=5) as raw:
        raw.sendall(struct.pack("<q", 4) + b"evil" + bytes(NONCE_BYTES + 32))
        try:
            raw.recv(len(HELLO) + NONCE_BYTES)
            closed = raw.recv(1) == b""
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
            closed = True
        assert closed
    deadline = time.monotonic() + 5
    while server.refused < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.refused == 3
    assert calls == []


def test_the_bs_refuses_a_server_that_cannot_prove_the_key() -> None:
    impostor = DirectServer(reverse, bytes(32), device=3, host="127.0.0.1")
    with pytest.raises(DirectError):
        DirectLink(impostor.address, KEY, 3)


def test_an_unreachable_port_names_the_device_and_the_way_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(DirectError, match=r"device 3's direct port .* --transport compiled"):
            DirectLink(("127.0.0.1", port), KEY, 3, timeout_s=2.0)


def test_a_raising_handler_reaches_the_bs_typed_and_the_other_answers_are_still_read(server: DirectServer) -> None:
    other = DirectServer(reverse, KEY, device=4, host="127.0.0.1")
    links = {3: DirectLink(server.address, KEY, 3), 4: DirectLink(other.address, KEY, 4)}
    with pytest.raises(DeviceCodeError, match="device 3: ValueError: the device's code raised"):
        direct_round(links, {3: b"boom", 4: b"abc"}, timeout_s=5.0)
    raw, lost = direct_round(links, {3: b"ok", 4: b"xyz"}, timeout_s=5.0)  # no stale answer left behind
    assert raw == {3: b"ko", 4: b"zyx"} and lost == {}


def test_a_silent_device_is_lost_at_the_deadline(server: DirectServer) -> None:
    links = {3: DirectLink(server.address, KEY, 3)}
    start = time.monotonic()
    raw, lost = direct_round(links, {3: b"sleep1.0"}, timeout_s=0.2)
    assert raw == {} and "no answer within 0.20 s" in lost[3]
    assert 0.19 <= time.monotonic() - start < 0.9


def serve_forever(address: mp.Queue) -> None:  # type: ignore[type-arg]
    server = DirectServer(reverse, KEY, device=3, host="127.0.0.1")
    address.put(server.address)
    time.sleep(600)


def test_a_killed_device_process_is_noticed_at_once_not_at_the_deadline() -> None:
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=serve_forever, args=(queue,), daemon=True)
    proc.start()
    links = {3: DirectLink(queue.get(timeout=30), KEY, 3)}
    assert direct_round(links, {3: b"abc"}, timeout_s=5.0) == ({3: b"cba"}, {})
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    start = time.monotonic()
    raw, lost = direct_round(links, {3: b"abc"}, timeout_s=5.0)
    assert raw == {} and "its actor or node is gone" in lost[3]
    assert time.monotonic() - start < 1.0  # the kernel closed the connection: no wait for the 5 s deadline


def test_frame_lengths_outside_the_bounds_are_refused() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(struct.pack("<q", MAX_FRAME + 1))
        with pytest.raises(DirectError, match="outside"):
            _recv_length(b)
        a.sendall(struct.pack("<q", -7))
        with pytest.raises(DirectError, match="outside"):
            _recv_length(b)


def test_port_ranges_parse_and_malformed_ones_name_the_option_and_value() -> None:
    assert parse_ports("40000-40015") == range(40000, 40016)
    assert parse_ports(" 41000 ") == range(41000, 41001)
    with pytest.raises(ValueError, match=r"--direct-ports = 'abc' is not a port range; write LOW-HIGH"):
        parse_ports("abc")
    for bad in ("5-3", "0-10", "65000-70000"):
        with pytest.raises(ValueError, match=r"1 <= LOW <= HIGH <= 65535"):
            parse_ports(bad)
    with pytest.raises(ValueError, match="WDMOE_DIRECT_PORTS = 'x'"):
        parse_ports("x", DIRECT_PORTS_ENV)


def test_a_server_listens_on_the_first_free_port_of_its_range_or_says_the_range_is_full() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=rf"device 3: no free port in {port}-{port} .* widen the range"):
            DirectServer(reverse, KEY, device=3, host="127.0.0.1", ports=range(port, port + 1))
        server = DirectServer(reverse, KEY, device=3, host="127.0.0.1", ports=range(port, port + 50))
        assert port < server.address[1] < port + 50
        assert direct_round({3: DirectLink(server.address, KEY, 3)}, {3: b"ab"}, 5.0) == ({3: b"ba"}, {})


def test_a_device_node_environment_carries_a_checked_port_range(tmp_path) -> None:
    from wdmoe.backends.ray_cluster import device_node_env, write_token_file

    token = write_token_file(tmp_path / "token")
    assert device_node_env(token, None, "40000-40015")[DIRECT_PORTS_ENV] == "40000-40015"
    assert DIRECT_PORTS_ENV not in device_node_env(token, None) or DIRECT_PORTS_ENV in os.environ
    with pytest.raises(ValueError, match="--direct-ports"):
        device_node_env(token, None, "40000-")


def test_a_device_node_turns_rays_unauthenticated_metrics_exporter_off_unless_told_otherwise(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wdmoe.backends.ray_cluster import METRICS_ENV, device_node_env, write_token_file

    token = write_token_file(tmp_path / "token")
    monkeypatch.delenv(METRICS_ENV, raising=False)
    assert device_node_env(token, None)[METRICS_ENV] == "0"
    monkeypatch.setenv(METRICS_ENV, "1")  # an operator who wants Ray's metrics (and firewalls the port) keeps them
    assert device_node_env(token, None)[METRICS_ENV] == "1"
