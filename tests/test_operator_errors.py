"""What an operator meets first (issue 13, item 7): mistakes at the command line end in one
clear line on stderr and exit code 2, not a traceback, and create nothing."""

import argparse
import asyncio
import json
import os
import socket

import pytest

import core
from engine import config as config_module
from tally import cli
from tests.test_client import SECRETS, ThreadedServer


def write_config(path, *, port=7420, data=None, secret=SECRETS[1]):
    data_line = f'data = "{data}"\n' if data is not None else ""
    path.write_text(f"[server]\nport = {port}\n{data_line}[[clients]]\nid = 1\nsecret = \"{secret.hex()}\"\n")
    return str(path)


def files_under(directory):
    return sorted(os.path.relpath(os.path.join(root, name), directory)
                  for root, dirs, files in os.walk(directory) for name in dirs + files)


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_wrong_client_secret_is_one_line_and_creates_nothing(tmp_path, capsys):
    with ThreadedServer(str(tmp_path / "server")) as served:
        config = write_config(tmp_path / "wrong.toml", port=served.port, data=str(tmp_path / "server-data"),
                              secret=b"not the server's secret")
        before = files_under(tmp_path)
        code = cli.main(["load", "run", "--config", config, "--seconds", "0.2", "--rate", "10", "--quiet",
                         "--record", str(tmp_path / "trace.bin"), "--report", str(tmp_path / "report")])
        assert code == 2
        line = one_line(capsys.readouterr().err)
        assert line.startswith("tally load run: ") and "refused our MAC" in line and "client secret" in line
        assert files_under(tmp_path) == before  # no trace (.partial), no report, no data directory


def test_serve_on_a_port_in_use_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "config.toml")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--config", config, "--data", str(tmp_path / "data"), "--port", str(port)]) == 2
    assert one_line(capsys.readouterr().err) == f"tally serve: port {port} on 127.0.0.1 is in use"
    assert not (tmp_path / "data").exists()  # refused before the store made its directory


def test_serve_on_a_data_directory_in_use_is_one_line(tmp_path, capsys):
    config = write_config(tmp_path / "config.toml")
    data = str(tmp_path / "data")
    with core.open(data, accounts_max=100, transfers_hot_max=1000):  # holds its lock, as a running server does
        assert cli.main(["serve", "--config", config, "--data", data, "--port", "0"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"tally serve: {data}: ") and "in use" in line


def test_first_serve_does_not_persist_its_overrides_into_the_new_config(tmp_path, monkeypatch):
    from engine import serve

    served = []
    monkeypatch.setattr(serve, "run", lambda config: served.append(config) or 0)
    path = str(tmp_path / "config.toml")
    assert cli.main(["serve", "--config", path, "--data", str(tmp_path / "elsewhere"), "--port", "7555"]) == 0
    # This run used the overrides...
    assert (served[0].server.data, served[0].server.port) == (str(tmp_path / "elsewhere"), 7555)
    # ...but the file written keeps the defaults for a later plain `tally serve`.
    written = config_module.load(path)
    assert (written.server.data, written.server.port) == (config_module.DEFAULT_DATA_DIR, config_module.DEFAULT_PORT)


@pytest.mark.parametrize("command", [["info"], ["log", "archive"]])
@pytest.mark.parametrize("make", ["missing", "empty directory"])
def test_a_path_that_is_not_a_data_directory_is_refused_and_left_alone(tmp_path, capsys, command, make):
    path = tmp_path / "mistyped"
    if make == "empty directory":
        path.mkdir()
    assert cli.main(command + ["--data", str(path)]) == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"tally {' '.join(command)}: {path}: ")
    assert files_under(tmp_path) == ([] if make == "missing" else ["mistyped"])


def test_a_rate_out_of_range_gets_one_message_whatever_the_value(tmp_path, capsys):
    from loadgen.workload import Rate

    messages = {Rate(per_s=value).check() for value in (0.0, -5.0, float("nan"), float("inf"), 1e9)}
    assert messages == {"rate.per_s must be in (0, 100000000]"}
    errors = set()
    for value in ("0", "-5"):
        assert cli.main(["load", "run", "--config", str(tmp_path / "config.toml"), "--rate", value]) == 2
        errors.add(one_line(capsys.readouterr().err))
    assert errors == {"tally load run: rate.per_s must be in (0, 100000000]"}


def test_a_workload_file_is_read_by_its_content_whatever_its_name(tmp_path):
    from loadgen.workload import WorkloadError, load

    toml_named_yaml = tmp_path / "payments.yaml"
    toml_named_yaml.write_text("seconds = 3\n[rate]\nper_s = 50\n")
    assert (load(str(toml_named_yaml)).seconds, load(str(toml_named_yaml)).rate.per_s) == (3, 50)
    json_named_txt = tmp_path / "payments.txt"
    json_named_txt.write_text(json.dumps({"seconds": 4}))
    assert load(str(json_named_txt)).seconds == 4
    neither = tmp_path / "payments.yml"
    neither.write_text("seconds: 3\n")
    with pytest.raises(WorkloadError, match=r"payments\.yml: not valid TOML"):
        load(str(neither))


def test_every_sub_command_help_has_a_description():
    def check(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    sub = action.choices[choice.dest]
                    assert sub.description == choice.help, f"{name} {choice.dest}"
                    check(sub, f"{name} {choice.dest}")
                    seen.append(choice.dest)

    seen = []
    check(cli.build_parser(), "tally")
    assert {"serve", "info", "run", "replay", "latency", "archive"} <= set(seen)


def test_server_tests_run_on_uvloop_too(data_dir, event_loop_kind):
    # tests/test_server.py runs every test under both loops (conftest.event_loop_kind)...
    from tests import test_server

    marks = test_server.pytestmark if isinstance(test_server.pytestmark, list) else [test_server.pytestmark]
    assert any(mark.name == "usefixtures" and "event_loop_kind" in mark.args for mark in marks)

    # ...and the fixture does put a served Server on the loop named.
    async def scenario():
        async with test_server.serving(data_dir) as (store, server, port):
            from engine.client import Client

            client = await Client.connect("127.0.0.1", port, client_id=1, secret=test_server.SECRETS[1])
            await client.ping()
            client.close()
            return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert test_server.run(scenario()) == event_loop_kind
