"""RetryBackend, against a scripted flaky backend: the wrapper is the thing under test here."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from backupfs.backends.base import STALE_TEMPORARY_AGE, Backend, BackendInfo, FileType
from backupfs.backends.memory import MemoryBackend
from backupfs.backends.retry import RetryBackend
from backupfs.errors import AlreadyExists, BackendError, NotFound, TransientBackendError

# file ids (64 hex digits): every backend refuses other names (backends/layout.py)
AA, KK, K2, L1 = "aa" * 32, "cc" * 32, "c2" * 32, "d1" * 32
A, B, C = "0a" * 32, "0b" * 32, "0c" * 32


class Flaky:
    """A MemoryBackend whose next calls fail as scripted: `fail("load", exc, exc)`."""

    def __init__(self) -> None:
        self.inner = MemoryBackend("memory:flaky")
        self.script: dict[str, list[BaseException]] = {}
        self.calls: dict[str, int] = {}
        self.list_fail_after: int | None = None  # entries yielded before list fails

    @property
    def location(self) -> str:
        return self.inner.location

    def fail(self, method: str, *errors: BaseException) -> None:
        self.script.setdefault(method, []).extend(errors)

    def _enter(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        if self.script.get(method):
            raise self.script[method].pop(0)

    def create(self) -> None:
        self._enter("create")
        self.inner.create()

    def exists(self) -> bool:
        self._enter("exists")
        return self.inner.exists()

    def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
        self._enter("save")
        self.inner.save(ftype, name, data)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self._enter("load")
        return self.inner.load(ftype, name, offset, length)

    def stat(self, ftype: FileType, name: str) -> int:
        self._enter("stat")
        return self.inner.stat(ftype, name)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        self._enter("list")
        for i, entry in enumerate(sorted(self.inner.list(ftype))):
            if self.list_fail_after is not None and i == self.list_fail_after:
                self.list_fail_after = None
                raise TransientBackendError("connection dropped while listing")
            yield entry

    def remove(self, ftype: FileType, name: str) -> None:
        self._enter("remove")
        self.inner.remove(ftype, name)

    def info(self) -> BackendInfo:
        self._enter("info")
        return self.inner.info()

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_AGE) -> int:
        self._enter("remove_stale_temporaries")
        return self.inner.remove_stale_temporaries(max_age)

    def close(self) -> None:
        self._enter("close")


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def wrap(flaky: Backend, attempts: int = 4) -> tuple[RetryBackend, Sleeps]:
    sleeps = Sleeps()
    return RetryBackend(
        flaky, attempts=attempts, base_delay=1.0, max_delay=5.0, sleep=sleeps, rng=random.Random(7)
    ), sleeps


def transient(n: int) -> list[BaseException]:
    return [TransientBackendError(f"glitch {i}") for i in range(n)]


def test_transient_failures_are_retried_until_success() -> None:
    flaky = Flaky()
    flaky.inner.save(FileType.DATA, AA, b"payload")
    retry, sleeps = wrap(flaky)
    flaky.fail("load", *transient(3))
    assert retry.load(FileType.DATA, AA, 1, 3) == b"ayl"
    assert flaky.calls["load"] == 4
    assert len(sleeps) == 3
    for attempt, pause in enumerate(sleeps):  # full jitter: anywhere in [0, cap]
        assert 0 <= pause <= min(5.0, 1.0 * 2**attempt)


@pytest.mark.parametrize(
    "method", ["create", "exists", "save", "load", "stat", "remove", "info", "remove_stale_temporaries"]
)
def test_every_method_retries(method: str) -> None:
    flaky = Flaky()
    flaky.inner.save(FileType.KEY, KK, b"key")
    retry, _ = wrap(flaky)
    flaky.fail(method, *transient(2))
    calls: dict[str, Callable[[], object]] = {
        "create": lambda: retry.create(),
        "exists": lambda: retry.exists(),
        "save": lambda: retry.save(FileType.KEY, K2, b"x"),
        "load": lambda: retry.load(FileType.KEY, KK),
        "stat": lambda: retry.stat(FileType.KEY, KK),
        "remove": lambda: retry.remove(FileType.KEY, KK),
        "info": lambda: retry.info(),
        "remove_stale_temporaries": lambda: retry.remove_stale_temporaries(),
    }
    calls[method]()
    assert flaky.calls[method] == 3


def test_gives_up_after_the_last_attempt() -> None:
    flaky = Flaky()
    retry, sleeps = wrap(flaky, attempts=3)
    errors = transient(5)
    flaky.fail("stat", *errors)
    with pytest.raises(TransientBackendError) as info:
        retry.stat(FileType.DATA, AA)
    assert info.value is errors[2]
    assert flaky.calls["stat"] == 3
    assert len(sleeps) == 2


@pytest.mark.parametrize(
    "error",
    [NotFound("gone"), AlreadyExists("there"), BackendError("permission denied")],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_are_not_retried(error: BackendError) -> None:
    flaky = Flaky()
    retry, sleeps = wrap(flaky)
    flaky.fail("load", error)
    with pytest.raises(type(error)) as info:
        retry.load(FileType.DATA, AA)
    assert info.value is error
    assert flaky.calls["load"] == 1
    assert sleeps == []


def test_other_exceptions_pass_straight_through() -> None:
    flaky = Flaky()
    retry, sleeps = wrap(flaky)
    flaky.fail("save", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        retry.save(FileType.DATA, AA, b"x")
    assert flaky.calls["save"] == 1 and sleeps == []


def test_delay_grows_exponentially_and_is_capped() -> None:
    retry = RetryBackend(MemoryBackend(), base_delay=0.5, max_delay=4.0, rng=random.Random(1))
    for attempt in range(10):
        cap = min(4.0, 0.5 * 2**attempt)
        samples = [retry.delay(attempt) for _ in range(200)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.9  # spread over the whole range, not a fixed delay


def test_list_is_retried_when_it_fails_before_the_first_entry() -> None:
    flaky = Flaky()
    for name in (A, B, C):
        flaky.inner.save(FileType.INDEX, name, b"x")
    retry, sleeps = wrap(flaky)
    flaky.list_fail_after = 0
    assert sorted(retry.list(FileType.INDEX)) == [(A, 1), (B, 1), (C, 1)]
    assert flaky.calls["list"] == 2 and len(sleeps) == 1


def test_list_is_not_retried_once_entries_were_yielded() -> None:
    flaky = Flaky()
    for name in (A, B, C):
        flaky.inner.save(FileType.INDEX, name, b"x")
    retry, sleeps = wrap(flaky)
    flaky.list_fail_after = 2
    seen = []
    with pytest.raises(TransientBackendError):
        for entry in retry.list(FileType.INDEX):
            seen.append(entry)
    assert seen == [(A, 1), (B, 1)]  # nothing twice
    assert flaky.calls["list"] == 1 and sleeps == []


def test_list_gives_up_after_the_last_attempt() -> None:
    flaky = Flaky()
    flaky.fail("list", *transient(10))
    retry, _ = wrap(flaky, attempts=3)
    with pytest.raises(TransientBackendError):
        list(retry.list(FileType.INDEX))
    assert flaky.calls["list"] == 3


def test_config_written_by_a_failed_attempt_counts_as_saved() -> None:
    """The reply to a config save is lost after the server stored it: the retry must not fail
    with AlreadyExists for our own config, but must for someone else's."""

    class LostReply(Flaky):
        def save(self, ftype: FileType, name: str, data: bytes | memoryview) -> None:
            self._enter("save")
            self.inner.save(ftype, name, data)
            if self.calls["save"] == 1:
                raise TransientBackendError("connection reset after the upload")

    flaky = LostReply()
    retry, _ = wrap(flaky)
    retry.save(FileType.CONFIG, "config", b"ours")
    assert flaky.inner.load(FileType.CONFIG, "config") == b"ours"

    with pytest.raises(AlreadyExists):
        retry.save(FileType.CONFIG, "config", b"another init")  # no failure first: plain refusal

    other = LostReply()
    other.inner.save(FileType.CONFIG, "config", b"theirs")
    retry, _ = wrap(other)
    other.fail("save", TransientBackendError("connect timeout"))
    with pytest.raises(AlreadyExists):
        retry.save(FileType.CONFIG, "config", b"ours")


def test_remove_whose_reply_was_lost_succeeds() -> None:
    class LostReply(Flaky):
        def remove(self, ftype: FileType, name: str) -> None:
            self._enter("remove")
            self.inner.remove(ftype, name)
            if self.calls["remove"] == 1:
                raise TransientBackendError("connection reset after the delete")

    flaky = LostReply()
    flaky.inner.save(FileType.LOCK, L1, b"lock")
    retry, _ = wrap(flaky)
    retry.remove(FileType.LOCK, L1)
    assert list(flaky.inner.list(FileType.LOCK)) == []
    with pytest.raises(NotFound):
        retry.remove(FileType.LOCK, L1)  # without a failure first, missing is missing


def test_pass_through() -> None:
    flaky = Flaky()
    retry, _ = wrap(flaky)
    assert retry.location == "memory:flaky"
    assert retry.remove_stale_temporaries() == 0  # the inner backend has no temporaries
    assert flaky.calls["remove_stale_temporaries"] == 1
    assert retry.info() == flaky.inner.info()
    retry.close()
    assert flaky.calls["close"] == 1
    with pytest.raises(ValueError):
        RetryBackend(flaky, attempts=0)
