"""Failed logins, rate-limited per client address (token buckets), in bounded memory.

Every failed login costs a bcrypt check (~0.1 s of a CPU at cost 10), and those checks share
two worker threads; unlimited, a few clients guessing passwords would queue everyone else's
logins behind theirs. Each address gets a bucket of `burst` tokens, refilled at one per
`refill_seconds`; a login that is not already remembered as verified takes a token before its
bcrypt check, and gets it back if the password was right. With the bucket empty the answer is
429 at once, without a check.

Memory stays bounded whatever the number of addresses: buckets that have refilled carry no
information and are dropped, and once `max_addresses` are tracked, new addresses share one
overflow bucket, so an attacker with many addresses cannot grow the table, nor reset their
own buckets by pushing them out of it. IPv6 clients are counted per /64, the block one host
typically owns.

Not thread-safe: used from the trio event loop only.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

LOGIN_BURST: Final = 20  # failed logins an address may make in a row (mistyped passwords, a test run)
LOGIN_REFILL_SECONDS: Final = 3.0  # then one more every 3 s: 20 guesses a minute
MAX_ADDRESSES: Final = 10_000  # ~2 MB of buckets at most
IPV6_PREFIX: Final = 64
_OVERFLOW: Final = "*"  # the bucket every address shares once the table is full


class LoginLimiter:
    """Token buckets of failed-login allowance, one per client address."""

    def __init__(
        self,
        burst: int = LOGIN_BURST,
        refill_seconds: float = LOGIN_REFILL_SECONDS,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_addresses = max_addresses
        self._clock = clock
        # key -> [tokens, when they were counted]; least recently used first
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        """Buckets held, the overflow bucket included: never more than `max_addresses` + 1."""
        return len(self._buckets)

    def take(self, address: str | None) -> float:
        """Reserves one failed login for `address`: 0.0 if granted, else the seconds until one is.

        Reserved before the check, not counted after it, so a burst of concurrent guesses
        cannot all pass while the failures are still being checked.
        """
        bucket = self._bucket(self._key(address))
        if bucket[0] >= 1:
            bucket[0] -= 1
            return 0.0
        return (1 - bucket[0]) * self.refill_seconds

    def give_back(self, address: str | None) -> None:
        """The login taken for `address` succeeded: it does not count."""
        key = self._key(address)
        bucket = self._buckets.get(key) or self._buckets.get(_OVERFLOW)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + 1)

    def _bucket(self, key: str) -> list[float]:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._forget_refilled(now)
            if len(self._buckets) >= self.max_addresses:
                key = _OVERFLOW
                bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = [float(self.burst), now]
        tokens, counted = bucket
        bucket[0] = min(float(self.burst), tokens + (now - counted) / self.refill_seconds)
        bucket[1] = now
        self._buckets.move_to_end(key)
        return bucket

    def _forget_refilled(self, now: float) -> None:
        """Drops buckets untouched long enough to be full again: the least recently used first,
        so the scan stops at the first one still in use (amortised O(1) per new address)."""
        full_after = self.burst * self.refill_seconds
        while self._buckets:
            key, (_tokens, counted) = next(iter(self._buckets.items()))
            if now - counted < full_after:
                return
            del self._buckets[key]

    @staticmethod
    def _key(address: str | None) -> str:
        if not address:
            return ""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
        return str(ip)
