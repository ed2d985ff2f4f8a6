"""Run an aiohttp application on 127.0.0.1 in a background thread with its own event loop.

aiohttp serves thousands of concurrent slow requests on one loop, which the capture benchmark
needs (200+ teacher calls held open for a second each); a thread keeps the server usable from
plain synchronous tests as a context manager.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Self

from aiohttp import web


class ServerThread:
    """Base of the fake servers: ``with Server() as s: s.url``; ``.requests`` logs the bodies.

    ``.arrivals`` holds when each request came; ``.max_in_flight`` the most answered at once.
    """

    def __init__(self, port: int = 0, delay_s: float = 0.0, keep_requests: bool = True) -> None:
        self.port = port
        self.delay_s = delay_s
        # A server under a long load (bench/bench_service.py: a million requests) must not keep
        # them all: the lists grow, and so do the garbage collector's pauses, in every answer.
        self.keep_requests = keep_requests
        self.requests: list[dict] = []
        self.arrivals: list[float] = []  # time.monotonic() of each logged request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    def app(self) -> web.Application:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)
        self._thread.start()
        self._started.wait(10)
        if self._error is not None:
            raise RuntimeError(f"{type(self).__name__} did not start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._runner is None:
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, body: dict) -> None:
        """Log a request body and when it came."""
        if not self.keep_requests:
            return
        self.arrivals.append(time.monotonic())
        self.requests.append(body)

    async def pause(self) -> None:
        """The configured answer delay, counting the request as in flight meanwhile."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(
                self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
            )
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # the port the OS chose
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.close()
