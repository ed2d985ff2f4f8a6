"""A client-side rate limit for the teacher: requests per minute and tokens per minute.

The provider's own limits are per minute, replenished continuously, so each limit is a token
bucket refilled at ``per_minute / 60`` a second, holding at most one second's worth (bursts stay
small, so 250 jobs that start together do not hit the API in one instant). A request takes its
estimated tokens before it goes out; when the reply says what it really used, ``settle`` charges
the difference. A bucket may go into debt (one request can cost more than a second's tokens), and
later requests wait until it is paid off. Waiters are served in arrival order (asyncio.Lock is
fair), so no call starves.

No maintained library does "charge the real cost afterwards" (aiolimiter only takes up front), so
this is written here; it is a few lines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``per_minute`` units a minute, at most one second's worth banked, debt allowed."""

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._level = self.capacity
        self._updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._updated) * self.rate)
        self._updated = now

    async def take(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` (or a full bucket, if it costs more) is there; take it.

        Returns the seconds waited.
        """
        started = self._clock()
        need = min(amount, self.capacity)
        async with self._lock:
            self._refill()
            while self._level < need:
                await asyncio.sleep((need - self._level) / self.rate)
                self._refill()
            self._level -= amount
        return self._clock() - started

    def charge(self, amount: float) -> None:
        """Take (or, if negative, give back) ``amount`` without waiting."""
        self._refill()
        self._level = min(self.capacity, self._level - amount)


class RateLimiter:
    """The teacher's limits together; either may be off (``None``)."""

    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.requests = TokenBucket(requests_per_minute) if requests_per_minute else None
        self.tokens = TokenBucket(tokens_per_minute) if tokens_per_minute else None

    async def admit(self, estimated_tokens: int) -> float:
        """Wait until one request of about ``estimated_tokens`` may go; return seconds waited."""
        waited = 0.0
        if self.requests is not None:
            waited += await self.requests.take(1)
        if self.tokens is not None:
            waited += await self.tokens.take(estimated_tokens)
        return waited

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Charge what a request really used beyond (or below) its estimate."""
        if self.tokens is not None:
            self.tokens.charge(actual_tokens - estimated_tokens)
