"""``tally serve`` as a process: start-up line, clients, graceful SIGTERM/SIGINT with requests in
flight (every acknowledged request is durable, exit code 0), configuration errors, TLS."""

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

import core
from engine import config as config_module
from engine.client import Client, ServerError
from tests.test_client import (  # noqa: F401 - certificate is a fixture
    FUNDING, MERCHANT, SECRETS, WALLET, WALLET_FUNDS, certificate, client_context, run, set_up_accounts, transfer,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTENING = re.compile(r"^tally serve: listening on ([0-9.]+):(\d+)")


def write_config(tmp_path, extra=""):
    path = tmp_path / "config.toml"
    path.write_text("[server]\naccounts_max = 10000\ntransfers_hot_max = 1000000\n" + extra
                    + "".join(f'[[clients]]\nid = {i}\nsecret = "{s.hex()}"\n' for i, s in SECRETS.items()))
    return str(path)


class Served:
    """A ``tally serve`` process; ``port`` from its first line of output."""

    def __init__(self, config_path, data_dir, *extra):
        self.data_dir = data_dir
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tally", "serve", "--config", config_path, "--port", "0", "--data", data_dir,
             *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first_line = self._readline(timeout=20)
        match = LISTENING.match(self.first_line)
        if match is None:
            self.process.kill()
            raise AssertionError(f"unexpected first line {self.first_line!r}; stderr: {self.process.stderr.read()}")
        self.port = int(match.group(2))

    def _readline(self, timeout):
        line = []
        reader = threading.Thread(target=lambda: line.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line:
            self.process.kill()
            raise AssertionError(f"tally serve printed nothing in {timeout} s")
        return line[0]

    def stop(self, signum=signal.SIGTERM, timeout=20):
        """Signal the process (unless ``signum`` is None: it was signalled already) and wait for it;
        returns (exit code, the rest of stdout, stderr)."""
        if signum is not None and self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(f"tally serve did not stop within {timeout} s; stderr: {err}")
        return self.process.returncode, out, err

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def test_serve_creates_accounts_and_transfers_and_stops_on_sigterm(tmp_path):
    data_dir = str(tmp_path / "data")
    with Served(write_config(tmp_path), data_dir) as served:
        assert served.first_line.startswith("tally serve: listening on 127.0.0.1:")
        assert "(TLS)" not in served.first_line

        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=2, secret=SECRETS[2])
            await set_up_accounts(client)
            results = await asyncio.gather(*[client.create_transfer(**transfer(10 + i, WALLET, MERCHANT, 10))
                                             for i in range(101)])
            assert results == [core.Result.ok] * 100 + [core.Result.exceeds_credits]
            wallet = await client.lookup_accounts([WALLET])
            assert (int(wallet["debits_posted"][0]), int(wallet["credits_posted"][0])) == (WALLET_FUNDS, WALLET_FUNDS)
            client.close()
        run(scenario())
        code, out, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    assert "shutting down" in out
    with core.open(data_dir) as store:
        assert store.ledger.account_count == 3
        assert store.ledger.transfer_count == 101
        wallet = store.lookup_accounts([WALLET])
        assert (int(wallet["debits_posted"][0]), int(wallet["credits_posted"][0])) == (WALLET_FUNDS, WALLET_FUNDS)


def signal_under_load(tmp_path, signum, senders=6, signal_after=30):
    """Six senders keep 200-transfer requests in flight; after ``signal_after`` replies the server
    gets ``signum``; each sender runs until the server is gone (ConnectionError: one reconnect
    attempt). Returns (exit code, stderr, [(batch, results)] acknowledged, [batch] unanswered, data dir).
    Transfer 7 of each request fails on purpose (the wallet cannot pay that much)."""
    data_dir = str(tmp_path / "data")
    with Served(write_config(tmp_path), data_dir) as served:
        acknowledged, unanswered = [], []

        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=1, secret=SECRETS[1],
                                          reconnect_attempts=1)
            await set_up_accounts(client)

            async def sender(worker):
                for k in range(10_000):
                    rows = [transfer(1_000_000 * (worker + 1) + 1000 * k + j, FUNDING, MERCHANT, 1 + j % 5)
                            for j in range(200)]
                    rows[7] = transfer(rows[7]["id"], WALLET, MERCHANT, 10 * WALLET_FUNDS)
                    batch = core.transfers_from_dicts(rows)
                    try:
                        acknowledged.append((batch, await client.create_transfers(batch)))
                    except ConnectionError:
                        unanswered.append(batch)
                        return
                    if len(acknowledged) == signal_after:
                        served.process.send_signal(signum)

            await asyncio.gather(*[sender(w) for w in range(senders)])
            client.close()
        run(scenario())
        code, _, err = served.stop(None)
    return code, err, acknowledged, unanswered, data_dir


def lookup_all(store, ids):
    """Lookups hold at most 8,190 ids: in parts."""
    return np.concatenate([store.lookup_transfers(ids[i:i + 8000]) for i in range(0, len(ids), 8000)])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_with_requests_in_flight_loses_nothing_that_was_acknowledged(tmp_path, signum):
    code, err, acknowledged, unanswered, data_dir = signal_under_load(tmp_path, signum)
    assert code == 0, err
    assert "Traceback" not in err, err
    assert len(acknowledged) >= 30
    assert len(unanswered) == 6  # every sender ran until the server was gone
    for _, results in acknowledged:
        assert results.tolist() == [0] * 7 + [core.Result.exceeds_credits] + [0] * 192
    ok = np.concatenate([batch[results == 0] for batch, results in acknowledged])
    with core.open(data_dir) as store:
        found = lookup_all(store, ok["id_lo"].tolist())
        assert found["id_lo"].tolist() == ok["id_lo"].tolist()
        assert found["amount"].tolist() == ok["amount"].tolist()
        # An unanswered request may have been applied, but only whole (a request is one batch).
        applied = [batch for batch in unanswered if len(store.lookup_transfers(batch["id_lo"].tolist()))]
        for batch in applied:
            assert len(store.lookup_transfers(batch["id_lo"].tolist())) == 199
        assert store.ledger.transfer_count == 1 + len(ok) + 199 * len(applied)
        also = sum(int(batch["amount"].sum()) - 10 * WALLET_FUNDS for batch in applied)
        merchant = store.lookup_accounts([MERCHANT])
        funding = store.lookup_accounts([FUNDING])
        assert int(merchant["credits_posted"][0]) == int(ok["amount"].sum()) + also
        assert int(funding["debits_posted"][0]) == WALLET_FUNDS + int(ok["amount"].sum()) + also


def test_graceful_shutdown_delivers_the_reply_of_every_request_it_applied(tmp_path):
    """``Server.close`` answers every request it read before closing: so a request the client got
    no reply for was never read, and must not have been applied (else the client reports a
    failure for a payment that was made)."""
    code, err, acknowledged, unanswered, data_dir = signal_under_load(tmp_path, signal.SIGTERM)
    assert code == 0, err
    with core.open(data_dir) as store:
        applied_without_reply = [int(batch["id_lo"][0]) for batch in unanswered
                                 if len(store.lookup_transfers(batch["id_lo"].tolist()))]
    assert applied_without_reply == []


def test_serve_creates_a_missing_config_file_and_its_secret_lets_a_client_in(tmp_path):
    path = tmp_path / "fresh" / "config.toml"
    with Served(str(path), str(tmp_path / "data")) as served:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        config = config_module.load(str(path))
        [credentials] = config.clients

        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=1, secret=credentials.secret_bytes)
            await client.ping()
            client.close()
        run(scenario())
        code, _, err = served.stop(signal.SIGINT)
    assert code == 0, err


@pytest.mark.parametrize("extra_config, arguments, message", [
    ("", ["--tls-cert", "cert.pem"], "tls_cert and tls_key go together"),
    ("port = 99999\n", [], "port"),
    ("colour = 1\n", [], "colour"),
])
def test_serve_refuses_a_bad_configuration_with_exit_code_2(tmp_path, extra_config, arguments, message):
    path = write_config(tmp_path, extra_config)
    process = subprocess.run([sys.executable, "-m", "tally", "serve", "--config", path, "--data",
                              str(tmp_path / "data"), *arguments], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert process.returncode == 2
    assert message in process.stderr
    assert not (tmp_path / "data").exists()


def test_serve_with_tls(tmp_path, certificate):
    cert, key = certificate
    data_dir = str(tmp_path / "data")
    with Served(write_config(tmp_path), data_dir, "--tls-cert", cert, "--tls-key", key) as served:
        assert served.first_line.rstrip().split(", ")[0].endswith("(TLS)")

        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=1, secret=SECRETS[1],
                                          ssl=client_context(cert))
            await set_up_accounts(client)
            client.close()
            plain = await Client.connect("127.0.0.1", served.port, client_id=1, secret=SECRETS[1],
                                         reconnect_attempts=1)
            with pytest.raises((ConnectionError, ServerError)):  # not a hang
                await asyncio.wait_for(plain.ping(), 10)
            plain.close()
            client = await Client.connect("127.0.0.1", served.port, client_id=1, secret=SECRETS[1],
                                          ssl=client_context(cert))
            await client.ping()
            client.close()
        run(scenario())
        code, _, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    with core.open(data_dir) as store:
        assert store.ledger.transfer_count == 1


def test_serve_prints_its_checkpoints_and_logs_them_for_load_reports(tmp_path):
    data_dir = str(tmp_path / "data")
    config = write_config(tmp_path, "checkpoint_interval_events = 50\n")
    with Served(config, data_dir) as served:
        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=2, secret=SECRETS[2])
            await set_up_accounts(client)
            for i in range(6):  # a checkpoint due each batch, one at a time (with its writeback)
                await client.create_transfers(core.transfers_from_dicts(
                    [transfer(1000 * (i + 1) + j, FUNDING, MERCHANT, 1) for j in range(60)]))
            await asyncio.sleep(1.5)  # the server reports its background jobs once a second
            client.close()
        run(scenario())
        code, out, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    printed = re.findall(r"^tally serve: checkpoint at [0-9.]+: .* MiB in [0-9.]+ s", out, re.M)
    events = [json.loads(line) for line in open(os.path.join(data_dir, "events.jsonl"))]
    checkpoints = [event for event in events if event["kind"] == "checkpoint"]
    assert len(checkpoints) == len(printed) >= 1  # (how many: as the checkpoint thread keeps up)
    assert all(event["bytes_written"] > 0 and event["duration_s"] >= event["commit_s"] >= 0 for event in checkpoints)


def test_serve_exposes_its_latency_histograms_and_tally_metrics_prints_them(tmp_path):
    import socket

    with socket.socket() as probe:  # a free port for the metrics endpoint
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    path = write_config(tmp_path, f"metrics_port = {metrics_port}\n")
    with Served(path, str(tmp_path / "data")) as served:
        assert f"metrics on http://127.0.0.1:{metrics_port}/metrics" in served.first_line

        async def scenario():
            client = await Client.connect("127.0.0.1", served.port, client_id=1, secret=SECRETS[1])
            await client.create_accounts(core.accounts_from_dicts([{"id": 1, "ledger": 156, "code": 1}]))
            for _ in range(3):
                await client.lookup_accounts([1])
            client.close()
        run(scenario())
        shown = subprocess.run([sys.executable, "-m", "tally", "metrics", "--config", path], cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
        code, _, err = served.stop()
    assert code == 0, err
    assert shown.returncode == 0, shown.stderr
    rows = {tuple(line.split()[:3]) for line in shown.stdout.splitlines()[1:]}
    assert ("create_accounts", "total", "1") in rows and ("lookup_accounts", "commit", "3") in rows


def test_metrics_of_a_server_without_the_endpoint_is_one_line(tmp_path):
    path = write_config(tmp_path)
    shown = subprocess.run([sys.executable, "-m", "tally", "metrics", "--config", path], cwd=ROOT,
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 2 and "metrics_port is 0" in shown.stderr
