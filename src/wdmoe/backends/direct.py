"""The direct data path of the Ray backend: one authenticated TCP connection per device, blocking waits at both ends.

Ray places the device actors, loads and verifies their shards, notices a lost node and starts a replacement; the
per-layer batches need none of that, only the lowest round-trip time. Ray's compiled-graph channels wait by
spinning (an idle device actor keeps a core busy), which on a small machine delays whichever process needs that
core next; a socket read waits in the kernel, like the `multiprocessing.Pipe` floor of
`bench/transport_overhead.py`. So each device actor also serves its batches on a socket of its own
(`DirectServer`, a thread in the actor), and the BS keeps one connection per device (`DirectLink`).

Authentication: the BS draws a fresh 256-bit key per device actor and hands it over in the actor's `load` call,
which travels on Ray's token-authenticated RPC, so only a holder of the cluster token can learn or set it. Every
connection starts with a mutual challenge-response (HMAC-SHA256 over both sides' random nonces and the device id):
a client without the key is disconnected before it can send a batch, and the BS refuses a server that cannot
prove it holds the key. Like Ray's token mode, this authenticates the peers and does not encrypt the traffic:
keep the network private (or tunnel it) where activations must not be read.

Ports: the kernel picks a free one, unless the node's environment has WDMOE_DIRECT_PORTS ("40000-40015", set by
`wdmoe device start --direct-ports`), for networks where only known ports are open to the BS.

Frames: an int64 length, then that many bytes (`wdmoe.backends.wire` batches and results: only numbers, nothing
is unpickled). An answer of length -1 carries the device's error message instead of a result (its code raised:
a bug to report, not a lost device). Lengths above `MAX_FRAME` are refused; the BS knows the size of the result it
asked for (`wire.result_size`) and refuses any other length before allocating a byte for it.

Hostile peers: a handshake must finish within `HANDSHAKE_TIMEOUT_S` in all (a deadline over every read, so one
byte every few seconds does not hold it open); at most `MAX_PENDING_HANDSHAKES` connections may be in their
handshake at once: a new one evicts the oldest (its socket is shut down, its thread ends), so a flood of idle
connections costs a bounded number of threads, and the BS, which answers the greeting at once, still gets through
unless the flood opens more than that many connections within one handshake's round trip; an `accept` that fails
for lack of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off and goes on.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from collections.abc import Callable

DIRECT_PORTS_ENV = "WDMOE_DIRECT_PORTS"
HELLO = b"WDMOE-DIRECT-1\n"
NONCE_BYTES = 32
MAX_FRAME = 1 << 31  # 2 GiB: far above a layer step's batch, below anything a corrupt header could ask for
MAX_ERROR = 1 << 20  # bytes of a device's error message
HANDSHAKE_TIMEOUT_S = 10.0  # the whole handshake, every read together
MAX_PENDING_HANDSHAKES = 16  # connections in their handshake at once; a new one evicts the oldest
ACCEPT_BACKOFF_S = (0.01, 1.0)  # first and longest pause after accept fails for lack of descriptors or memory
_EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LENGTH = struct.Struct("<q")
_ERROR = -1


class DirectError(ConnectionError):
    """The connection to a device is unusable: closed, timed out, or it failed authentication."""


class DeviceCodeError(RuntimeError):
    """The device's own code raised while running a batch (its message is the device's)."""


def parse_ports(spec: str, source: str = "--direct-ports") -> range:
    """The ports of "LOW-HIGH" (inclusive) or "PORT"; a malformed spec is refused, naming `source`."""
    low, sep, high = spec.strip().partition("-")
    try:
        first, last = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ValueError(f"{source} = {spec!r} is not a port range; write LOW-HIGH, e.g. 40000-40015") from None
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"{source} = {spec!r}: ports must satisfy 1 <= LOW <= HIGH <= 65535")
    return range(first, last + 1)


def _listen(host: str, ports: range | None, device: int) -> socket.socket:
    """A listening socket on `host`: on a port the kernel picks, or on the first free one of `ports`."""
    if ports is None:
        return socket.create_server((host, 0))
    for port in ports:
        try:
            return socket.create_server((host, port))
        except OSError:
            continue
    raise OSError(
        f"device {device}: no free port in {ports.start}-{ports.stop - 1} on {host} for its direct socket "
        f"({DIRECT_PORTS_ENV}); widen the range (`wdmoe device start --direct-ports`)"
    )


def _mac(key: bytes, role: bytes, device: int, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, b"%s|%d|%s|%s" % (role, device, first, second), hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, size: int, deadline: float | None = None) -> bytearray:
    """`size` bytes from `sock` (raises DirectError when the peer closes first). With `deadline` (time.monotonic()),
    every read after the first waits only the time left (the caller sets the first read's timeout), so a peer that
    trickles bytes cannot stretch the wait; past it, TimeoutError."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise DirectError(f"connection closed after {got} of {size} bytes")
        got += n
        if deadline is not None and got < size:
            _time_left(sock, deadline)
    return buf


def _time_left(sock: socket.socket, deadline: float) -> None:
    """Set `sock`'s timeout to the time left until `deadline`; TimeoutError when none is left."""
    left = deadline - time.monotonic()
    if left <= 0.0:
        raise TimeoutError("the deadline passed")
    sock.settimeout(left)


def _send_frame(sock: socket.socket, payload: bytes | bytearray | memoryview, length: int | None = None) -> None:
    """The length (default: the payload's) and the payload, in one system call when the kernel takes it all; a
    socket with a timeout may take only a part of a large frame, and the rest follows."""
    header = _LENGTH.pack(len(payload) if length is None else length)
    sent = sock.sendmsg([header, payload])
    if sent < len(header):
        sock.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(payload):
        sock.sendall(memoryview(payload)[sent - len(header) :])


def _recv_length(sock: socket.socket, deadline: float | None = None) -> int:
    (length,) = _LENGTH.unpack(_recv_exact(sock, _LENGTH.size, deadline))
    if length > MAX_FRAME or length < _ERROR:
        raise DirectError(f"frame length {length} is outside -1..{MAX_FRAME}")
    return int(length)


class DirectServer:
    """Device side: a listening socket on `host` and a thread per connection that answers `handler(batch bytes)`.

    Args:
        handler: runs one batch (wire bytes) and returns the result's wire bytes.
        key: the 32-byte key this device's connections must prove they hold.
        device: the device id (bound into the handshake, so a key cannot be replayed against another device).
        host: the address to listen on (the node's IP).
        ports: the ports it may listen on, the first free one taken (None: the kernel picks a free port).
        on_thread_start: called first in every connection thread (e.g. to set torch's thread count there).
        handshake_timeout_s: the whole handshake's deadline, in seconds.
        max_pending: connections allowed in their handshake at once.
    """

    def __init__(
        self,
        handler: Callable[[bytearray], bytes | None],
        key: bytes,
        device: int,
        host: str,
        ports: range | None = None,
        on_thread_start: Callable[[], None] | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        max_pending: int = MAX_PENDING_HANDSHAKES,
    ) -> None:
        self.handler, self.key, self.device = handler, key, device
        self.on_thread_start = on_thread_start
        self.handshake_timeout_s = handshake_timeout_s
        self.refused = 0  # connections that failed the handshake (evicted ones included)
        self.accept_errors = 0  # accepts that failed for lack of descriptors or memory (and were retried)
        self.max_pending = max_pending
        self._pending: collections.deque[socket.socket] = collections.deque()  # in their handshake, oldest first
        self._pending_lock = threading.Lock()
        self._closed = False
        self.listener = _listen(host, ports, device)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        threading.Thread(target=self._accept, name=f"wdmoe-direct-{device}", daemon=True).start()

    def _accept(self) -> None:
        pause_s = ACCEPT_BACKOFF_S[0]
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError as exc:
                if self._closed or exc.errno not in _EXHAUSTED:
                    return  # closed
                self.accept_errors += 1  # the connection stays in the backlog; take it once descriptors free up
                time.sleep(pause_s)
                pause_s = min(2 * pause_s, ACCEPT_BACKOFF_S[1])
                continue
            pause_s = ACCEPT_BACKOFF_S[0]
            with self._pending_lock:
                if len(self._pending) >= self.max_pending:  # a flood: the oldest handshake makes room
                    with contextlib.suppress(OSError):
                        self._pending.popleft().shutdown(socket.SHUT_RDWR)  # its thread's read returns, it ends
                self._pending.append(conn)
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
            except RuntimeError:  # no thread could be started
                self._done_pending(conn)
                self.refused += 1
                conn.close()

    def _done_pending(self, conn: socket.socket) -> None:
        with self._pending_lock, contextlib.suppress(ValueError):  # ValueError: evicted already
            self._pending.remove(conn)

    def _handshake(self, conn: socket.socket) -> bool:
        deadline = time.monotonic() + self.handshake_timeout_s
        conn.settimeout(self.handshake_timeout_s)
        ours = os.urandom(NONCE_BYTES)
        conn.sendall(HELLO + ours)
        _time_left(conn, deadline)
        reply = _recv_exact(conn, NONCE_BYTES + hashlib.sha256().digest_size, deadline)
        theirs, proof = bytes(reply[:NONCE_BYTES]), bytes(reply[NONCE_BYTES:])
        if not hmac.compare_digest(proof, _mac(self.key, b"client", self.device, ours, theirs)):
            return False
        _time_left(conn, deadline)
        conn.sendall(_mac(self.key, b"server", self.device, theirs, ours))
        conn.settimeout(None)
        return True

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                shook = self._handshake(conn)
            except (OSError, DirectError):
                shook = False
            finally:
                self._done_pending(conn)
            if not shook:
                self.refused += 1
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.on_thread_start is not None:
                self.on_thread_start()
            while True:
                try:
                    length = _recv_length(conn)
                    if length < 0:
                        return  # only the device answers with -1
                    batch = _recv_exact(conn, length)
                except (OSError, DirectError):
                    return  # the BS closed the connection (or went away)
                try:
                    answer = self.handler(batch) or b""
                except Exception as exc:  # the device's code raised: report it to the BS, keep serving
                    message = f"{type(exc).__name__}: {exc}".encode()[:MAX_ERROR]
                    with contextlib.suppress(OSError):
                        _send_frame(conn, _LENGTH.pack(len(message)) + message, length=_ERROR)
                    continue
                try:
                    _send_frame(conn, answer)
                except OSError:
                    return

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.listener.close()


class DirectLink:
    """BS side: one authenticated connection to device `device`'s `DirectServer` at `address`."""

    def __init__(self, address: tuple[str, int], key: bytes, device: int, timeout_s: float = HANDSHAKE_TIMEOUT_S):
        self.device = device
        try:
            self.sock = socket.create_connection(address, timeout=timeout_s)
        except OSError as exc:
            raise DirectError(
                f"cannot reach device {device}'s direct port {address[0]}:{address[1]} ({exc}); open it to the BS, "
                "or use --transport compiled (Ray's own ports only)"
            ) from exc
        deadline = time.monotonic() + timeout_s  # the whole handshake, however slowly the bytes come
        try:
            hello = _recv_exact(self.sock, len(HELLO) + NONCE_BYTES, deadline)
            if not hello.startswith(HELLO):
                raise DirectError(f"{address[0]}:{address[1]} is not a wdmoe device (greeting {bytes(hello[:16])!r})")
            theirs, ours = bytes(hello[len(HELLO) :]), os.urandom(NONCE_BYTES)
            _time_left(self.sock, deadline)
            self.sock.sendall(ours + _mac(key, b"client", device, theirs, ours))
            _time_left(self.sock, deadline)
            proof = bytes(_recv_exact(self.sock, hashlib.sha256().digest_size, deadline))
        except (OSError, DirectError) as exc:
            self.close()
            raise DirectError(f"device {device} at {address[0]}:{address[1]} refused the handshake ({exc})") from exc
        if not hmac.compare_digest(proof, _mac(key, b"server", device, ours, theirs)):
            self.close()
            raise DirectError(f"the server at {address[0]}:{address[1]} could not prove it is device {device}")
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, payload: bytes) -> None:
        _send_frame(self.sock, payload)

    def receive(self, deadline: float, expected: int | None = None) -> bytearray:
        """The answer to the last `send`, waiting until `deadline` (time.monotonic()) at most, over all its reads.
        With `expected` (the result's size in bytes, which the BS knows from the batch), an answer of any other
        length is refused before anything is allocated for it."""
        self.sock.settimeout(max(deadline - time.monotonic(), 1e-4))
        length = _recv_length(self.sock, deadline)
        if length == _ERROR:
            (size,) = _LENGTH.unpack(_recv_exact(self.sock, _LENGTH.size, deadline))
            if not 0 <= size <= MAX_ERROR:
                raise DirectError(f"error message length {size} is outside 0..{MAX_ERROR}")
            message = bytes(_recv_exact(self.sock, size, deadline)).decode(errors="replace")
            raise DeviceCodeError(f"device {self.device}: {message}")
        if expected is not None and length != expected:
            raise DirectError(f"device {self.device} announced an answer of {length} bytes; its batch's result has "
                              f"{expected}")
        return _recv_exact(self.sock, length, deadline)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def direct_round(
    links: dict[int, DirectLink], payloads: dict[int, bytes], timeout_s: float,
    expected: dict[int, int] | None = None,
) -> tuple[dict[int, bytearray], dict[int, str]]:
    """Send every device in `payloads` its batch, then read every answer: ({device: result}, {device: why lost}).

    The sends come first, so the devices compute concurrently; each read blocks in the kernel until its answer,
    the connection's end (the device's process died: noticed at once) or the shared deadline (`timeout_s`).
    `expected`: {device: the byte size of its answer}; a device that announces another size is lost (its
    connection is closed: what it would send next cannot be trusted).
    """
    sizes = expected or {}
    deadline = time.monotonic() + timeout_s
    raw: dict[int, bytearray] = {}
    lost: dict[int, str] = {}
    sent = []
    for device, payload in payloads.items():
        try:
            links[device].send(payload)
            sent.append(device)
        except OSError as exc:
            lost[device] = f"send failed ({exc}): its actor or node is gone"
    raised: list[DeviceCodeError] = []
    for device in sent:  # every answer is read, even after an error, so that no connection holds a stale one
        try:
            raw[device] = links[device].receive(deadline, sizes.get(device))
        except TimeoutError:
            lost[device] = f"no answer within {timeout_s:.2f} s (call_timeout_s + emulated air time)"
        except (OSError, DirectError) as exc:
            lost[device] = f"connection lost ({exc}): its actor or node is gone"
        except DeviceCodeError as exc:
            raised.append(exc)
    if raised:
        raise raised[0]
    return raw, lost
