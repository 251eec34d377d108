"""Running a server process: ``tally serve`` (store, uvloop, signals, graceful shutdown).

On SIGINT or SIGTERM the server stops accepting and reading, commits and answers every request
it already received, closes the connections and the store, and returns 0.
"""

from __future__ import annotations

import asyncio
import signal
import ssl as ssl_module
import sys

import core
from engine.config import Config
from engine.server import Server


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
        announce(f"tally serve: listening on {settings.host}:{port}{' (TLS)' if ssl else ''}, "
                 f"data {settings.data}, {store.sequence:,} batches logged")
        reporter = asyncio.create_task(_announce_checkpoints(store, announce))
        await stop.wait()
        reporter.cancel()
        announce("tally serve: shutting down (answering what was received)")
        await server.close()
        if settings.state_hash_on_exit:
            # The live state, to compare with what replaying the log gives (tally replay-log).
            announce(f"tally serve: state hash {store.state_hash()}")
    finally:
        store.close()


async def _announce_checkpoints(store: core.Store, announce, period_s: float = 1.0) -> None:
    """One line per checkpoint written: when, how long, how much (operators line these up
    with latency; the store keeps the latest in ``store.background_events``)."""
    announced_unix_s = 0.0
    while True:
        await asyncio.sleep(period_s)
        for event in list(store.background_events):
            if event.kind == "checkpoint" and event.started_unix_s > announced_unix_s:
                announced_unix_s = event.started_unix_s
                announce(f"tally serve: checkpoint at {event.started_unix_s:.3f}: {event.bytes_written / 2**20:,.0f} MiB "
                         f"in {event.duration_s:.3f} s (commit {event.commit_s:.3f} s, "
                         f"batches paused {event.stall_s * 1e3:.1f} ms)")


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
