"""Run a fake provider server as a process: ``python -m tests.support.servers anthropic --delay 1``.

It prints its URL on the first line of stdout (so a parent process can read it) and serves until
SIGTERM or Ctrl-C. ``--fail-status 429 --fail-times 5`` answers the first five requests with
that status (and ``--retry-after``), to try a client's retries by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from tests.support.servers import AnthropicServer, Fault, OllamaServer


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.servers", description=__doc__)
    parser.add_argument("api", choices=("anthropic", "ollama"))
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--fail-status", type=int, default=0, help="inject this HTTP status")
    parser.add_argument("--fail-times", type=int, default=1, help="on this many requests")
    parser.add_argument("--retry-after", type=float, default=None, help="retry-after seconds")
    parser.add_argument(
        "--forget-requests",
        action="store_true",
        help="keep no log of the requests (for long loads: the log only grows)",
    )
    args = parser.parse_args()
    faults = []
    if args.fail_status:
        faults.append(Fault(args.fail_status, args.retry_after, times=args.fail_times))
    server_type = AnthropicServer if args.api == "anthropic" else OllamaServer
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = server_type(
        port=args.port, delay_s=args.delay, faults=faults, keep_requests=not args.forget_requests
    )
    with server:
        print(server.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
