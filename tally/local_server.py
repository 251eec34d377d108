"""A `tally serve` process on loopback, for the benchmarks, the demo and the tests.

>>> process, port = local_server.start(base_dir, secret=secret)     # data in base_dir/server
>>> ...
>>> local_server.stop(process)                                        # SIGTERM: a graceful stop
0
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import signal
import subprocess
import sys

from core import constants

SERVER_START_TIMEOUT_S = 300.0  # prefaulting gigabytes on a VM takes a while
SERVER_STOP_TIMEOUT_S = 120.0


def start(base_dir: str, *, secret: bytes, accounts_max: int = constants.ACCOUNTS_MAX_DEFAULT,
          transfers_hot_max: int = constants.TRANSFERS_HOT_MAX_DEFAULT, prefault: bool = False,
          checkpoint_interval_events: int = constants.CHECKPOINT_INTERVAL_EVENTS_DEFAULT,
          state_hash_on_exit: bool = False, metrics_port: int = 0, **capacities: int) -> tuple[subprocess.Popen, int]:
    """Write ``base_dir/config.toml`` (client 1 with ``secret``), start the server on a free port.

    Returns the process and its port once it listens. ``metrics_port``: serve the latency
    histograms there (``engine.metrics``; 0: off). ``capacities``: other tables' capacities, by
    their name in the server's config (``orders_max``, ``coupons_max``, ...; the rest default).
    """
    from engine.config import ServerSettings

    unknown = sorted(name for name in capacities
                     if not name.endswith("_max") or name not in ServerSettings.__struct_fields__)
    if unknown:
        raise TypeError(f"unknown capacities: {', '.join(unknown)}")
    os.makedirs(base_dir, exist_ok=True)
    config_path = os.path.join(base_dir, "config.toml")
    with open(config_path, "w") as file:
        file.write(
            "[server]\n"
            f"data = {json.dumps(os.path.join(base_dir, 'server'))}\n"   # a JSON string is a TOML basic string
            f"host = \"127.0.0.1\"\nport = 0\nprefault = {'true' if prefault else 'false'}\n"
            f"checkpoint_interval_events = {checkpoint_interval_events}\n"
            f"accounts_max = {accounts_max}\ntransfers_hot_max = {transfers_hot_max}\n"
            + "".join(f"{name} = {int(value)}\n" for name, value in capacities.items()) +
            f"state_hash_on_exit = {'true' if state_hash_on_exit else 'false'}\nmetrics_port = {metrics_port}\n"
            f"[[clients]]\nid = 1\nsecret = \"{secret.hex()}\"\n")
    os.chmod(config_path, 0o600)
    process = subprocess.Popen([sys.executable, "-m", "tally", "serve", "--config", config_path],
                               stdout=subprocess.PIPE, text=True)
    # Wait for "tally serve: listening on 127.0.0.1:PORT ..." at most the timeout.
    ready, _, _ = select.select([process.stdout], [], [], SERVER_START_TIMEOUT_S)
    line = process.stdout.readline() if ready else "(no line within the timeout)"
    if "listening on" not in line:
        process.kill()
        process.wait()
        raise RuntimeError(f"the server did not start: {line!r}")
    port = int(line.split("listening on ", 1)[1].split(",", 1)[0].split()[0].rsplit(":", 1)[1])
    return process, port


def drive(base_dir: str, driver, **options) -> tuple[object, int]:
    """Start a server (``start``'s ``options``, a fresh secret), run ``driver(port, secret, pid)``
    (a coroutine function) on the client side's event loop, stop the server; returns the
    driver's result and the server's exit code."""
    from loadgen.runner import loop_runner

    secret = secrets.token_bytes(32)
    process, port = start(base_dir, secret=secret, **options)
    try:
        result = loop_runner()(driver(port, secret, process.pid))
    finally:
        exit_code = stop(process)
    return result, exit_code


def stop(process: subprocess.Popen) -> int:
    """Stop the server gracefully (SIGTERM); its exit code."""
    return stop_and_read(process)[0]


def stop_and_read(process: subprocess.Popen) -> tuple[int, str]:
    """Stop the server gracefully (SIGTERM); its exit code and what it printed after starting."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=SERVER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output or ""


@contextlib.contextmanager
def serving_in_thread(store, client_secrets: dict[int, bytes]):
    """A server over an open ``store`` on loopback, its event loop on a thread of this process
    (for a store whose clock the caller sets: the settlement's bench and tests); yields the port."""
    import asyncio
    import threading

    from engine.server import Server

    loop = asyncio.new_event_loop()
    server = Server(store, client_secrets)
    port = loop.run_until_complete(server.start("127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, name="tally-server", daemon=True)
    thread.start()
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(SERVER_STOP_TIMEOUT_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
