"""Our SFTP client against a server that answers what a test tells it to: replies out of order
and in pieces, and the hostile or absurd bytes no real server sends. (Against real servers:
test_conformance.py, test_sftp_openssh.py.)"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from backupfs.backends.sftp.protocol import MAX_PACKET, ProtocolError, Session, Status

# request and reply types (draft-ietf-secsh-filexfer-02)
INIT, VERSION, OPEN, CLOSE, READ, STAT, OPENDIR, READDIR = 1, 2, 3, 4, 5, 17, 11, 12
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
Answer = Callable[[int, int, bytes], bytes]


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def string(b: bytes) -> bytes:
    return u32(len(b)) + b


def packet(kind: int, rid: int, body: bytes = b"") -> bytes:
    return u32(5 + len(body)) + bytes([kind]) + u32(rid) + body


def status(rid: int, code: int, message: bytes | None = b"error") -> bytes:
    return packet(STATUS, rid, u32(code) + (b"" if message is None else string(message) + string(b"")))


class FakeServer:
    """A Stream whose server side is `answer(type, id, body) -> reply bytes`, called per request.

    Replies to the requests of one write are sent in reverse order: a real server may answer
    in any order, and the client must not care."""

    def __init__(self, answer: Answer, version: int = 3, timeout: float = 5.0) -> None:
        self.answer = answer
        self.version = version
        self.timeout = timeout
        self.received = bytearray()
        self.pending = bytearray()
        self.cond = threading.Condition()
        self.ended = False

    def write(self, parts: Sequence[bytes | memoryview]) -> None:
        self.received += b"".join(bytes(p) for p in parts)
        replies = []
        while len(self.received) >= 4:
            length = struct.unpack_from(">I", self.received)[0]
            if len(self.received) < 4 + length:
                break
            kind = self.received[4]
            if kind == INIT:
                replies.append(u32(5) + bytes([VERSION]) + u32(self.version))
            else:
                rid = struct.unpack_from(">I", self.received, 5)[0]
                replies.append(self.answer(kind, rid, bytes(self.received[9 : 4 + length])))
            del self.received[: 4 + length]
        with self.cond:
            self.pending += b"".join(reversed(replies))
            self.cond.notify_all()

    def read_into(self, view: memoryview) -> int:
        with self.cond:
            if not self.cond.wait_for(lambda: self.pending or self.ended, self.timeout):
                raise TimeoutError("timed out")
            if not self.pending:
                raise EOFError("closed")
            n = min(len(view), len(self.pending))
            view[:n] = self.pending[:n]
            del self.pending[:n]
            return n

    def shutdown(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify_all()

    def close(self) -> None:
        self.shutdown()


def session(answer: Answer, timeout: float = 5.0, wait: float = 5.0, version: int = 3) -> Session:
    """A session over a FakeServer: `timeout` the session's, `wait` how long each stream read waits."""
    s = Session(FakeServer(answer, version, wait), timeout)
    s.handshake()
    s.read_chunk = 4096
    return s


def files(contents: dict[bytes, bytes], most: int = 1 << 30) -> Answer:
    """OPEN answers with the path as handle; READ with at most `most` bytes of it."""

    def answer(kind: int, rid: int, body: bytes) -> bytes:
        if kind == OPEN:
            path = body[4 : 4 + struct.unpack_from(">I", body)[0]]
            return packet(HANDLE, rid, string(path)) if path in contents else status(rid, 2)
        if kind == READ:
            hlen = struct.unpack_from(">I", body)[0]
            handle = body[4 : 4 + hlen]
            offset, size = struct.unpack_from(">QI", body, 4 + hlen)
            data = contents[handle][offset : offset + min(size, most)]
            return packet(DATA, rid, string(data)) if data else status(rid, 1, b"EOF")
        if kind == CLOSE:
            return status(rid, 0, b"")
        raise AssertionError(kind)

    return answer


def test_replies_in_pieces_and_out_of_order_make_the_whole_range() -> None:
    data = os.urandom(100_000)
    s = session(files({b"f": data}, most=1000))  # every reply short: the client asks for the rest
    handle = s.open_read("f")
    assert s.read_range(handle, 123, 90_000) == data[123:90_123]
    with pytest.raises(Status) as info:
        s.read_range(handle, 99_000, 2000)  # past the end
    assert info.value.code == 1
    assert s.read_range(handle, 0, 10) == data[:10]  # the session survived the error reply
    s.close()


def test_threads_share_one_session() -> None:
    contents = {f"f{i}".encode(): os.urandom(50_000 + i) for i in range(16)}
    s = session(files(contents))

    def read(name: bytes) -> bool:
        handle = s.open_read(name.decode())
        return s.read_range(handle, 0, len(contents[name])) == contents[name]

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(read, list(contents) * 4))
    s.close()


@pytest.mark.parametrize(
    "reply",
    [
        lambda rid: u32(MAX_PACKET + 1) + bytes([STATUS]) + u32(rid),  # a packet larger than allowed
        lambda rid: u32(3) + b"abc",  # shorter than a header
        lambda rid: status(rid + 1000, 0),  # a reply to a request never sent
        lambda rid: packet(DATA, rid, string(b"x" * 5000)),  # more DATA than asked for
        lambda rid: packet(DATA, rid, u32(4000) + b"x" * 10),  # DATA shorter than it says
        lambda rid: packet(ATTRS, rid, b""),  # the wrong reply to a READ
    ],
    ids=["huge-packet", "tiny-packet", "unknown-id", "too-much-data", "lying-length", "wrong-type"],
)
def test_nonsense_breaks_the_session_at_once(reply: Callable[[int], bytes]) -> None:
    def answer(kind: int, rid: int, body: bytes) -> bytes:
        return packet(HANDLE, rid, string(b"h")) if kind == OPEN else reply(rid)

    s = session(answer)
    handle = s.open_read("f")
    started = time.monotonic()
    with pytest.raises(ProtocolError):
        s.read_range(handle, 0, 4000)
    assert time.monotonic() - started < 2
    with pytest.raises(ProtocolError):  # and it stays broken
        s.stat("f")
    s.close()


@pytest.mark.parametrize(
    "reply",
    [
        lambda rid: packet(NAME, rid, u32(0xFFFFFFFF) + string(b"a") + string(b"a") + u32(0)),  # count lies
        lambda rid: packet(NAME, rid, u32(1) + string(b"a") + u32(1 << 30)),  # a string past the end
        lambda rid: packet(NAME, rid, u32(1) + string(b"a") + string(b"") + u32(0x80000000) + u32(1 << 31)),
    ],
    ids=["entry-count", "string-length", "extended-count"],
)
def test_absurd_listings_are_errors_not_hangs(reply: Callable[[int], bytes]) -> None:
    def answer(kind: int, rid: int, body: bytes) -> bytes:
        if kind == OPENDIR:
            return packet(HANDLE, rid, string(b"d"))
        return reply(rid) if kind == READDIR else status(rid, 0)

    s = session(answer)
    with pytest.raises(ProtocolError, match="truncated"):
        s.listdirs(["d"])
    s.close()


def test_a_status_without_a_message() -> None:
    s = session(lambda kind, rid, body: status(rid, 4, None))
    with pytest.raises(Status, match="status 4") as info:
        s.stat("f")
    assert info.value.code == 4
    s.close()


def test_an_old_server_is_refused() -> None:
    with pytest.raises(ProtocolError, match="version 2"):
        session(lambda kind, rid, body: b"", version=2)


def test_an_unanswered_request_times_out_an_idle_session_does_not() -> None:
    answered = threading.Event()

    def answer(kind: int, rid: int, body: bytes) -> bytes:
        return status(rid, 0) if answered.is_set() else b""  # the first request: no reply, ever

    s = session(answer, timeout=0.3, wait=0.1)
    time.sleep(0.5)  # idle longer than the timeout: nothing is due, nothing breaks
    answered.set()
    s.mkdir("a")
    answered.clear()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        s.mkdir("b")
    assert 0.3 <= time.monotonic() - started < 2
    s.close()
