"""Running a server process: ``tally serve`` (store, uvloop, signals, graceful shutdown).

On SIGINT or SIGTERM the server stops accepting and reading, commits and answers every request
it already received, closes the connections and the store, and returns 0.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import socket
import ssl as ssl_module
import sys

import msgspec

import core
from engine import metrics
from engine.config import Config
from engine.server import Server
from core.store import PRODUCT_CAPACITIES


#: In the data directory: one JSON line per checkpoint or slow flush (``core.store.BackgroundEvent``).
EVENTS_FILE = "events.jsonl"
#: A cold-tier flush taking at least this long is an event too (they normally take tens of ms).
SLOW_FLUSH_S = 0.25
EVENTS_FILE_BYTES_MAX = 16 << 20


class ServeError(Exception):
    """The server cannot start for a reason the operator fixes (the port taken, the data directory
    in use): ``tally serve`` says it in one line, without a traceback."""


def tls_context(cert: str, key: str) -> ssl_module.SSLContext:
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _refuse_a_port_in_use(host: str, port: int) -> None:
    """A port another process listens on is refused before anything is made (the real bind,
    after the store is open, still reports one that was taken meanwhile). Bound as asyncio's
    ``create_server`` binds (``SO_REUSEADDR``), so a port left in TIME_WAIT is not refused."""
    if port == 0:
        return
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ServeError(f"cannot listen on {host}:{port}: {error}") from error
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise _listen_error(host, port, error) from error


def _listen_error(host: str, port: int, error: OSError) -> ServeError:
    if error.errno == errno.EADDRINUSE:
        return ServeError(f"port {port} on {host} is in use")
    return ServeError(f"cannot listen on {host}:{port}: {error}")


async def serve(config: Config, *, announce=print) -> None:
    """Serve until SIGINT/SIGTERM; ``announce`` gets one line once the port is open."""
    settings = config.server
    ssl = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
    _refuse_a_port_in_use(settings.host, settings.port)  # before the store makes its directory
    try:
        store = core.open(settings.data, accounts_max=settings.accounts_max,
                          transfers_hot_max=settings.transfers_hot_max, pending_max=settings.pending_max,
                          prefault=settings.prefault, checkpoint_interval_events=settings.checkpoint_interval_events,
                          **{name: getattr(settings, name) for name in PRODUCT_CAPACITIES})
    except core.StoreError as error:  # e.g. held by another server: an operator's error, not a crash
        raise ServeError(str(error)) from error
    try:
        server = Server(store, config.secrets(), config.roles())
        try:
            port = await server.start(settings.host, settings.port, ssl=ssl)
        except OSError as error:
            await server.close()  # its pulse timer may be armed: stop it before the store closes
            raise _listen_error(settings.host, settings.port, error) from error
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        # Everything made so far (modules, the store, the server) lives as long as the process:
        # out of the collector's sight, a full collection scans only what came since.
        metrics_http = None
        if settings.metrics_port:
            try:
                metrics_http, _, metrics_port = metrics.start_endpoint(server.metrics, settings.metrics_host,
                                                                      settings.metrics_port)
            except OSError as error:
                await server.close()
                raise ServeError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: "
                                 f"{error.strerror or error}") from error
        gc.collect()
        gc.freeze()
        announce(f"tally serve: listening on {settings.host}:{port}{' (TLS)' if ssl else ''}, "
                 f"data {settings.data}, {store.sequence:,} batches logged"
                 + (f", metrics on http://{settings.metrics_host}:{metrics_port}/metrics" if metrics_http else ""))
        events = _EventReporter(store, announce, os.path.join(settings.data, EVENTS_FILE))
        reporter = asyncio.create_task(events.run())
        await stop.wait()
        reporter.cancel()
        announce("tally serve: shutting down (answering what was received)")
        await server.close()
        if metrics_http is not None:
            metrics_http.shutdown()
        events.report()  # the jobs of the last second
        if settings.state_hash_on_exit:
            # The live state, to compare with what replaying the log gives (tally replay-log).
            announce(f"tally serve: state hash {store.state_hash()}")
    finally:
        store.close()


class _EventReporter:
    """Per checkpoint written (and per cold-tier flush slower than ``SLOW_FLUSH_S``), a JSON
    line appended to ``DATA/events.jsonl``, which ``tally load run`` marks on its report's time
    axis (the file is rotated to ``events.jsonl.1`` past ``EVENTS_FILE_BYTES_MAX``); per
    checkpoint, a line for the operator too. The store keeps its latest jobs in
    ``store.background_events``, appended by two threads as the jobs finish."""

    def __init__(self, store: core.Store, announce, path: str):
        self.store, self.announce, self.path = store, announce, path
        # The events looked at, by identity: a previous list keeps them alive, so no id is reused.
        self._seen: list = []
        self._failed = False

    async def run(self, period_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(period_s)
            self.report()

    def report(self) -> None:
        events = list(self.store.background_events)
        seen = {id(event) for event in self._seen}
        fresh = [event for event in events if id(event) not in seen
                 and (event.kind == "checkpoint" or event.duration_s >= SLOW_FLUSH_S)]
        self._seen = events
        for event in fresh:
            if event.kind == "checkpoint":
                self.announce(f"tally serve: checkpoint at {event.started_unix_s:.3f}: "
                              f"{event.bytes_written / 2**20:,.0f} MiB in {event.duration_s:.3f} s "
                              f"(commit {event.commit_s:.3f} s, batches paused {event.stall_s * 1e3:.1f} ms)")
        if not fresh:
            return
        try:
            if os.path.exists(self.path) and os.path.getsize(self.path) > EVENTS_FILE_BYTES_MAX:
                os.replace(self.path, self.path + ".1")
            with open(self.path, "ab") as file:
                file.write(b"".join(msgspec.json.encode(event) + b"\n" for event in fresh))
        except OSError as error:
            if not self._failed:  # once: the server goes on without its events file
                self.announce(f"tally serve: cannot write {self.path}: {error}")
                self._failed = True


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
