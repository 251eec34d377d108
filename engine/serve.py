"""Running a server process: ``tally serve`` (store, uvloop, signals, graceful shutdown).

On SIGINT or SIGTERM the server stops accepting and reading, commits and answers every request
it already received, closes the connections and the store, and returns 0.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import ssl as ssl_module
import sys

import msgspec

import core
from engine.config import Config
from engine.server import Server


#: In the data directory: one JSON line per checkpoint or slow flush (``core.store.BackgroundEvent``).
EVENTS_FILE = "events.jsonl"
#: A cold-tier flush taking at least this long is an event too (they normally take tens of ms).
SLOW_FLUSH_S = 0.25


def tls_context(cert: str, key: str) -> ssl_module.SSLContext:
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(config: Config, *, announce=print) -> None:
    """Serve until SIGINT/SIGTERM; ``announce`` gets one line once the port is open."""
    settings = config.server
    ssl = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
    store = core.open(settings.data, accounts_max=settings.accounts_max, transfers_hot_max=settings.transfers_hot_max,
                      pending_max=settings.pending_max,
                      prefault=settings.prefault, checkpoint_interval_events=settings.checkpoint_interval_events)
    try:
        server = Server(store, config.secrets())
        port = await server.start(settings.host, settings.port, ssl=ssl)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        # Everything made so far (modules, the store, the server) lives as long as the process:
        # out of the collector's sight, a full collection scans only what came since.
        gc.freeze()
        announce(f"tally serve: listening on {settings.host}:{port}{' (TLS)' if ssl else ''}, "
                 f"data {settings.data}, {store.sequence:,} batches logged")
        reporter = asyncio.create_task(_report_background(store, announce, os.path.join(settings.data, EVENTS_FILE)))
        await stop.wait()
        reporter.cancel()
        announce("tally serve: shutting down (answering what was received)")
        await server.close()
        if settings.state_hash_on_exit:
            # The live state, to compare with what replaying the log gives (tally replay-log).
            announce(f"tally serve: state hash {store.state_hash()}")
    finally:
        store.close()


async def _report_background(store: core.Store, announce, events_path: str, period_s: float = 1.0) -> None:
    """Per checkpoint written (and per cold-tier flush slower than ``SLOW_FLUSH_S``), a JSON
    line appended to ``events_path`` (``DATA/events.jsonl``), which ``tally load run`` marks on
    its report's time axis; per checkpoint, a line for the operator too. The store keeps the
    latest jobs in ``store.background_events``."""
    seen: set[int] = set()  # ids of the events in the store's (bounded) deque already looked at
    while True:
        await asyncio.sleep(period_s)
        events = list(store.background_events)  # appended by two threads as their jobs finish
        fresh = [event for event in events if id(event) not in seen
                 and (event.kind == "checkpoint" or event.duration_s >= SLOW_FLUSH_S)]
        seen = {id(event) for event in events}
        for event in fresh:
            if event.kind != "checkpoint":
                continue
            announce(f"tally serve: checkpoint at {event.started_unix_s:.3f}: {event.bytes_written / 2**20:,.0f} MiB "
                     f"in {event.duration_s:.3f} s (commit {event.commit_s:.3f} s, "
                     f"batches paused {event.stall_s * 1e3:.1f} ms)")
        if fresh:
            with open(events_path, "ab") as file:
                file.write(b"".join(msgspec.json.encode(event) + b"\n" for event in fresh))


def run(config: Config, *, announce=None) -> int:
    """Run ``serve`` on uvloop (the default loop where uvloop is missing)."""
    def say(line: str) -> None:
        print(line, flush=True)

    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps odd platforms working
        runner = asyncio.run
    runner(serve(config, announce=announce or say))
    return 0


if __name__ == "__main__":
    sys.exit("use: tally serve")
