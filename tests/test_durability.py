"""No batch is acknowledged before the log's bytes are synced to disk.

What kill -9 cannot see: a process killed with SIGKILL leaves its written-but-unsynced data in
the kernel's page cache, and the next open reads it back from there. So test_crash.py passes just
as well when the log is never fsynced at all (``sync=False`` in the store's ``lmdb.open``): only a
power loss or a kernel crash would show the difference, and no test can pull the plug. What a
test can do is watch the calls that make data durable, and check their order against the
acknowledgements.

How: tests/fsync_shim.c, compiled here with ``cc`` and loaded into a child Python with
LD_PRELOAD, wraps libc's fsync, fdatasync, msync, sync_file_range, syncfs, sync and the write
family (write, pwrite, writev, pwritev) and appends one line per call on a regular file (call,
descriptor, whether the descriptor is O_DSYNC/O_SYNC, offset, length, result, path) to a trace
file. The child (tests/durability_writer.py) runs a store and appends "SUBMIT n" before handing
batch n to it and "ACK n" as soon as the store has given back its results, to the same file, each
line one write() on an O_APPEND descriptor: the trace is the order things happened in. py-lmdb
bundles liblmdb statically, but liblmdb calls these functions through libc's dynamic symbols, so
LD_PRELOAD sees every one of them (the trace checks below fail if it stops seeing them).

What makes a batch durable (docs/journal.md): the commit thread writes each group of batches
to the journal, ``<store>/journal``, as frames (one ``pwritev``), then ``fdatasync``s it; only
then are the batches acknowledged. The LMDB log (``data.mdb``) is written later by the sink,
in synced commits, and the journal's space is reused only after them.

The rule checked, for the journal's file (not ``checkpoint/data.mdb``, whose environment is
deliberately not synced: a checkpoint only saves replay time):

* at each "ACK n", the write of batch n's frame (its place in the journal is read from the
  file after the run: the child's few batches never wrap the ring) happened after "SUBMIT n"
  and is durable: written through an O_DSYNC/O_SYNC descriptor, or followed, before the ACK, by a
  successful fsync or fdatasync of the journal (or sync/syncfs). sync_file_range does not count:
  it neither flushes metadata nor the device's cache. Writes of later groups under way at an
  ack are judged at their own acks.
* so the rule is never vacuous: an ack with no write of its frame since its SUBMIT is a
  violation (a shim that stopped seeing the calls fails here, instead of passing).

Checked in three ways of waiting for results (blocking calls, pipelined ``submit`` with
``PendingBatch.result()``, and ``add_done_callback`` on the commit thread, the earliest point a
server can reply), and shown to be able to fail: the same child with the journal's sync turned
off must produce a violation at every ack. The LMDB log environment must stay synchronous (the
journal's space is reused after its commits): ``test_the_log_environment_syncs_its_commits``;
that a frame is overwritten only once the LMDB log holds its entry is checked at every write
of a ring going round by tests/test_journal.py.

If ``cc`` is missing the test fails (it does not skip): durability must not go unchecked
silently.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIM_SOURCE = os.path.join(ROOT, "tests", "fsync_shim.c")
TRACE_ENV = "TALLY_SYNC_TRACE"

SYNC_CALLS = {"fsync", "fdatasync", "msync"}     # durable for the file they name (msync: MS_SYNC)
GLOBAL_SYNC_CALLS = {"sync", "syncfs"}           # durable for every file (of the file system)
WRITE_CALLS = {"write", "pwrite", "pwrite64", "writev", "pwritev", "pwritev64", "pwritev2", "pwritev64v2"}


# ---------------------------------------------------------------------- the shim


@pytest.fixture(scope="module")
def shim(tmp_path_factory) -> str:
    compiler = shutil.which("cc")
    if compiler is None:
        pytest.fail("`cc` was not found on PATH: the durability test compiles an LD_PRELOAD shim "
                    "(tests/fsync_shim.c) with it and must not be skipped; install a C compiler")
    library = str(tmp_path_factory.mktemp("shim") / "fsync_shim.so")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-Wall", "-o", library, SHIM_SOURCE, "-ldl"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.fail(f"compiling {SHIM_SOURCE} failed:\n{built.stdout}{built.stderr}")
    return library


def _run_child(shim: str, tmp_path, mode: str, journal_mode: str) -> tuple[list[str], str]:
    """Run tests/durability_writer.py under the shim; the trace's lines and the store's path."""
    data_dir = str(tmp_path / "store")
    trace = str(tmp_path / "trace")
    env = dict(os.environ)
    env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env[TRACE_ENV] = trace
    child = subprocess.run([sys.executable, "-m", "tests.durability_writer", data_dir, trace, mode, journal_mode],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, f"durability_writer failed ({child.returncode}):\n{child.stdout}{child.stderr}"
    assert "cannot be preloaded" not in child.stderr, child.stderr
    with open(trace) as file:
        return file.read().splitlines(), data_dir


# ---------------------------------------------------------------------- the checker


@dataclasses.dataclass
class Event:
    line: int          # 1-based line of the trace
    text: str
    call: str
    dsync: bool
    offset: int
    length: int
    result: int
    path: str


@dataclasses.dataclass
class Verdict:
    violations: list[str]
    acks: int = 0
    writes: int = 0        # writes to the journal
    syncs: int = 0         # sync calls on the journal
    calls: dict = dataclasses.field(default_factory=dict)   # (call, file) -> count, every file


def _parse(number: int, text: str) -> Event | None:
    """A shim line as an Event, None for the child's own lines."""
    fields = text.split(" ", 7)
    if len(fields) < 8 or not fields[0].isdigit():
        return None
    _, call, _fd, dsync, offset, length, result, rest = fields
    path = rest.split(" flags=")[0] if call in ("msync", "msync_async", "sync_file_range") else rest
    return Event(number, text, call, dsync == "1", int(offset), int(length), int(result), path)


def journal_frames(data_dir: str) -> dict[int, tuple[int, int]]:
    """Batch sequence -> (start, end) of its frame in the journal, read from the file."""
    from core import journal

    with open(os.path.join(data_dir, "journal"), "rb") as file:
        data = file.read()
    frames, offset = {}, 0
    while offset + journal.HEADER.size <= len(data):
        magic, _, kind, _, sequence, length, _ = journal.HEADER.unpack_from(data, offset)
        if magic != journal.MAGIC or kind != journal.KIND_ENTRY:
            break
        frames[sequence] = (offset, offset + journal.frame_bytes(length))
        offset = frames[sequence][1]
    return frames


def check_trace(lines: list[str], data_dir: str, frames: dict[int, tuple[int, int]]) -> Verdict:
    """Violations of "every acked batch's journal frame was durable before its ack" (module docstring)."""
    journal_file = os.path.join(os.path.realpath(data_dir), "journal")
    verdict = Verdict([])
    writes: list[Event] = []        # successful writes to the journal, in order
    last_sync = 0                   # trace line of the last successful sync covering the journal
    submitted: dict[int, int] = {}  # batch -> trace line of its SUBMIT
    for number, text in enumerate(lines, start=1):
        words = text.split()
        if words[:1] == ["SUBMIT"]:
            submitted[int(words[1])] = number
            continue
        if words[:1] == ["ACK"]:
            batch = int(words[1])
            verdict.acks += 1
            if batch not in submitted:
                verdict.violations.append(f"line {number}: ACK {batch} without a SUBMIT {batch} before it")
                continue
            if batch not in frames:
                verdict.violations.append(f"line {number}: ACK {batch}, but the journal holds no frame of it")
                continue
            start = frames[batch][0]
            covering = [event for event in writes
                        if event.offset <= start < event.offset + event.result and event.line > submitted[batch]]
            if not covering:
                verdict.violations.append(
                    f"line {number}: ACK {batch}, but no write of its frame (offset {start}) to {journal_file} since "
                    f"SUBMIT {batch} (line {submitted[batch]}): the shim does not see the store's writes, or the "
                    "batch was acknowledged before it was written")
            elif not (covering[-1].dsync or last_sync > covering[-1].line):
                verdict.violations.append(
                    f"line {number}: ACK {batch} with its frame written (line {covering[-1].line}: "
                    f"{covering[-1].text}) and not yet synced")
            continue
        event = _parse(number, text)
        if event is None:
            continue
        inside = event.path.startswith(os.path.realpath(data_dir) + os.sep)
        where = os.path.relpath(event.path, os.path.realpath(data_dir)) if inside else os.path.basename(event.path)
        verdict.calls[(event.call, where)] = verdict.calls.get((event.call, where), 0) + 1
        if event.call in GLOBAL_SYNC_CALLS or (event.call in SYNC_CALLS and event.path == journal_file):
            if event.result == 0:
                verdict.syncs += event.path == journal_file
                last_sync = number
        elif event.call in WRITE_CALLS and event.path == journal_file and event.result > 0:
            verdict.writes += 1
            writes.append(event)
    return verdict


def _describe(verdict: Verdict) -> str:
    calls = ", ".join(f"{call} {where}: {count}" for (call, where), count in sorted(verdict.calls.items())
                      if "pycache" not in where and not where.endswith(".pyc"))
    return f"{verdict.acks} acks, {verdict.writes} journal writes, {verdict.syncs} journal syncs; calls: {calls}"


# ---------------------------------------------------------------------- the tests

MODES = ["blocking", "pipelined", "callback", "staged"]


@pytest.mark.parametrize("mode", MODES)
def test_every_ack_follows_a_sync_of_its_journal_write(shim, tmp_path, mode):
    lines, data_dir = _run_child(shim, tmp_path, mode, "as-is")
    verdict = check_trace(lines, data_dir, journal_frames(data_dir))
    assert not verdict.violations, (f"{len(verdict.violations)} violation(s), the first:\n"
                                    + "\n".join(verdict.violations[:5]) + "\n" + _describe(verdict))
    submits = sum(line.startswith("SUBMIT ") for line in lines)
    assert verdict.acks == submits > 10, _describe(verdict)
    assert verdict.syncs >= 1 and verdict.writes >= 1, _describe(verdict)
    # The checkpoint environment was written (unsynced, by design) and told apart from the
    # journal; the LMDB log was written by the sink.
    assert any(where == os.path.join("checkpoint", "data.mdb") and call in WRITE_CALLS
               for call, where in verdict.calls), _describe(verdict)
    assert any(where == "data.mdb" and call in WRITE_CALLS for call, where in verdict.calls), _describe(verdict)


@pytest.mark.parametrize("mode", MODES)
def test_the_check_fails_when_the_journal_is_not_synced(shim, tmp_path, mode):
    """Negative control: the same run with the journal's fdatasync left out must fail at every ack."""
    lines, data_dir = _run_child(shim, tmp_path, mode, "journal-unsynced")
    verdict = check_trace(lines, data_dir, journal_frames(data_dir))
    assert verdict.acks > 10, _describe(verdict)
    unsynced_acks = [v for v in verdict.violations if "not yet synced" in v]
    assert len(unsynced_acks) == verdict.acks, "\n".join(verdict.violations)


def test_the_log_environment_syncs_its_commits(tmp_path):
    """The journal's space is reused once the sink's LMDB commit returns: that commit must be
    synchronous, data and meta page (docs/journal.md)."""
    import core

    with core.open(str(tmp_path / "store"), accounts_max=16, transfers_hot_max=4096) as store:
        flags = store._env.flags()
        assert flags["sync"] and flags["metasync"], flags


def _trace(*lines: str) -> list[str]:
    """A synthetic trace: shim lines get a counter, fd 3 and the length field filled in."""
    out = []
    for counter, line in enumerate(lines, start=1):
        if line.split()[0] in ("SUBMIT", "ACK"):
            out.append(line)
            continue
        call, dsync, offset, path = line.split()
        out.append(f"{counter} {call} 3 {dsync} {offset} 4096 {0 if 'sync' in call else 4096} /s/{path}")
    return out


def test_checker_rules_on_synthetic_traces():
    frames = {1: (0, 100), 2: (100, 200), 3: (4096, 4196)}
    assert check_trace(_trace("SUBMIT 1", "pwritev 0 0 journal", "fdatasync 0 0 journal", "ACK 1"),
                       "/s", frames).violations == []
    # Written through O_DSYNC: durable by itself.
    assert check_trace(_trace("SUBMIT 1", "pwritev 1 0 journal", "ACK 1"), "/s", frames).violations == []
    # Not synced before the ack; or synced, but another file.
    for unsynced in (["pwritev 0 0 journal", "ACK 1", "fdatasync 0 0 journal"],
                     ["pwritev 0 0 journal", "fdatasync 0 0 data.mdb", "ACK 1"]):
        violations = check_trace(_trace("SUBMIT 1", *unsynced), "/s", frames).violations
        assert len(violations) == 1 and "not yet synced" in violations[0], violations
    # A sync before the write does not cover it.
    violations = check_trace(_trace("SUBMIT 1", "fdatasync 0 0 journal", "pwritev 0 0 journal", "ACK 1"),
                             "/s", frames).violations
    assert len(violations) == 1 and "not yet synced" in violations[0], violations
    # A later group's write under way at an ack is not that ack's business...
    ahead = _trace("SUBMIT 1", "SUBMIT 2", "SUBMIT 3", "pwritev 0 0 journal", "fdatasync 0 0 journal",
                   "pwritev 0 4096 journal", "ACK 1", "ACK 2", "fdatasync 0 0 journal", "ACK 3")
    assert check_trace(ahead, "/s", frames).violations == []
    # ...but it is at its own, if no sync came between.
    late = _trace("SUBMIT 1", "SUBMIT 3", "pwritev 0 0 journal", "fdatasync 0 0 journal", "pwritev 0 4096 journal",
                  "ACK 1", "ACK 3")
    assert len(check_trace(late, "/s", frames).violations) == 1
    # No write of the frame since its SUBMIT (an earlier write of that place does not count).
    stale = _trace("pwritev 0 0 journal", "fdatasync 0 0 journal", "SUBMIT 1", "ACK 1")
    assert "no write of its frame" in check_trace(stale, "/s", frames).violations[0]
