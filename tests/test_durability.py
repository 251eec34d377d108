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

What LMDB does per commit (observed; ``sync=True, metasync=True`` as core/store.py opens the
log): ``pwrite``/``writev`` of the dirty pages to data.mdb, ``fdatasync`` of data.mdb, then one
``pwrite`` of the meta page (offset < 2 pages) through a second descriptor of data.mdb opened with
O_DSYNC, which is synchronous in itself: no sync call follows it. With ``sync=False`` there is
no fdatasync and the meta page goes through the ordinary descriptor; with ``metasync=False``
the fdatasync stays but the meta page write (the commit point) is not synced before the commit
returns. The write-ahead of the next commit may already be under way when a batch is acked
(group commit with batches in flight).

The rule checked, for the log's own file ``<store>/data.mdb`` (not ``checkpoint/data.mdb``,
whose environment is deliberately not synced: a checkpoint only saves replay time):

* at each "ACK n", every write to data.mdb up to the last commit point before that ACK (the last
  meta page write: the commit that holds batch n has ended before its ack) is durable: written
  through an O_DSYNC/O_SYNC descriptor, or followed, before the ACK, by a successful fsync,
  fdatasync or synchronous msync of data.mdb (or sync/syncfs). sync_file_range does not count: it
  neither flushes metadata nor the device's cache. Writes after that last commit point belong to
  a commit still in progress (a later group) and are judged at their own acks.
* between "SUBMIT n" and "ACK n" there is at least one commit point, so the rule is never
  vacuous (a shim that stopped seeing the calls fails here, instead of passing).

The checker assumes, as LMDB guarantees, that one thread at a time writes data.mdb (write
transactions are serialized), so a sync logged after a write started after that write returned.

Checked in three ways of waiting for results (blocking calls, pipelined ``submit`` with
``PendingBatch.result()``, and ``add_done_callback`` on the commit thread, the earliest point a
server can reply), and shown to be able to fail: the same child with the log environment forced
to ``sync=False``, or to ``metasync=False`` (the subtler bug: every data page is synced, but the
commit point of the last transaction is not, so the batch just acked can vanish), must produce
violations.

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
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")  # LMDB's page size: the OS page size
META_BYTES = 2 * PAGE_BYTES              # LMDB's two meta pages lead the file

SYNC_CALLS = {"fsync", "fdatasync", "msync"}     # durable for the file they name (msync: MS_SYNC)
GLOBAL_SYNC_CALLS = {"sync", "syncfs"}           # durable for every file (of the file system)
WRITE_CALLS = {"write", "pwrite", "pwrite64", "writev", "pwritev", "pwritev64"}


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


def _run_child(shim: str, tmp_path, mode: str, log_env: str) -> tuple[list[str], str]:
    """Run tests/durability_writer.py under the shim; the trace's lines and the store's path."""
    data_dir = str(tmp_path / "store")
    trace = str(tmp_path / "trace")
    env = dict(os.environ)
    env["LD_PRELOAD"] = shim + (" " + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
    env[TRACE_ENV] = trace
    child = subprocess.run([sys.executable, "-m", "tests.durability_writer", data_dir, trace, mode, log_env],
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
    commits: int = 0       # commit points (meta page writes) of the log
    syncs: int = 0         # sync calls on the log
    calls: dict = dataclasses.field(default_factory=dict)   # (call, file) -> count, every file


def _parse(number: int, text: str) -> Event | None:
    """A shim line as an Event, None for the child's own lines."""
    fields = text.split(" ", 7)
    if len(fields) < 8 or not fields[0].isdigit():
        return None
    _, call, _fd, dsync, offset, length, result, rest = fields
    path = rest.split(" flags=")[0] if call in ("msync", "msync_async", "sync_file_range") else rest
    return Event(number, text, call, dsync == "1", int(offset), int(length), int(result), path)


def check_trace(lines: list[str], data_dir: str) -> Verdict:
    """Violations of "every acked batch's log writes were durable before its ack" (module docstring)."""
    log_file = os.path.join(os.path.realpath(data_dir), "data.mdb")
    verdict = Verdict([])
    unsynced: list[Event] = []     # writes to the log, in order, not yet made durable
    last_commit = 0                # trace line of the last commit point (meta page write)
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
            elif last_commit < submitted[batch]:
                verdict.violations.append(
                    f"line {number}: ACK {batch}, but no commit point of {log_file} since SUBMIT {batch} "
                    f"(line {submitted[batch]}): the shim does not see the store's writes, or the batch "
                    "was acknowledged before it was committed at all")
            exposed = [event for event in unsynced if event.line <= last_commit]
            if exposed:
                listed = "\n    ".join(f"line {event.line}: {event.text}" for event in exposed[:6])
                verdict.violations.append(
                    f"line {number}: ACK {batch} with {len(exposed)} committed write(s) to the log not yet "
                    f"synced:\n    {listed}")
            continue
        event = _parse(number, text)
        if event is None:
            continue
        inside = event.path.startswith(os.path.realpath(data_dir) + os.sep)
        where = os.path.relpath(event.path, os.path.realpath(data_dir)) if inside else os.path.basename(event.path)
        verdict.calls[(event.call, where)] = verdict.calls.get((event.call, where), 0) + 1
        if event.call in GLOBAL_SYNC_CALLS or (event.call in SYNC_CALLS and event.path == log_file):
            if event.result == 0:
                verdict.syncs += event.path == log_file
                unsynced.clear()  # whatever was written before is on disk now
        elif event.call in WRITE_CALLS and event.path == log_file:
            if event.offset < META_BYTES:
                verdict.commits += 1
                last_commit = number
            if not (event.dsync and event.result >= 0):
                unsynced.append(event)
    return verdict


def _describe(verdict: Verdict) -> str:
    calls = ", ".join(f"{call} {where}: {count}" for (call, where), count in sorted(verdict.calls.items())
                      if "pycache" not in where and not where.endswith(".pyc"))
    return f"{verdict.acks} acks, {verdict.commits} log commits, {verdict.syncs} log syncs; calls: {calls}"


# ---------------------------------------------------------------------- the tests

MODES = ["blocking", "pipelined", "callback"]


@pytest.mark.parametrize("mode", MODES)
def test_every_ack_follows_a_sync_of_its_log_writes(shim, tmp_path, mode):
    lines, data_dir = _run_child(shim, tmp_path, mode, "as-is")
    verdict = check_trace(lines, data_dir)
    assert not verdict.violations, (f"{len(verdict.violations)} violation(s), the first:\n"
                                    + "\n".join(verdict.violations[:5]) + "\n" + _describe(verdict))
    submits = sum(line.startswith("SUBMIT ") for line in lines)
    assert verdict.acks == submits > 10, _describe(verdict)
    assert verdict.syncs >= 1 and verdict.commits >= 1, _describe(verdict)
    # The checkpoint environment was written (unsynced, by design) and told apart from the log:
    # the rule above is about the log's file, not every data.mdb in the directory.
    assert any(where == os.path.join("checkpoint", "data.mdb") and call in WRITE_CALLS
               for call, where in verdict.calls), _describe(verdict)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("log_env", ["sync=False", "metasync=False"])
def test_the_check_fails_when_the_log_is_not_synced(shim, tmp_path, mode, log_env):
    """Negative control: the same run with the log environment's syncing turned off must fail."""
    lines, data_dir = _run_child(shim, tmp_path, mode, log_env)
    verdict = check_trace(lines, data_dir)
    assert verdict.acks > 10
    unsynced_acks = [v for v in verdict.violations if "not yet synced" in v]
    assert unsynced_acks, _describe(verdict)
    if mode != "pipelined":
        # Each ack comes before the next commit starts (blocking: the next batch is submitted
        # after it; callback: on the commit thread, right after the commit), so each one finds at
        # least its own commit point unsynced. Pipelined, the next commit's fdatasync may land
        # before an ack of metasync=False and cover it (this is timing).
        assert len(unsynced_acks) == verdict.acks, "\n".join(verdict.violations)
    if log_env == "sync=False":
        assert verdict.syncs == 0, _describe(verdict)


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
    commit = ["pwrite 0 65536 data.mdb", "fdatasync 0 0 data.mdb", "pwrite 1 32 data.mdb"]
    assert check_trace(_trace("SUBMIT 1", *commit, "ACK 1"), "/s").violations == []
    # The meta page written without O_DSYNC and not synced after: the commit point is exposed.
    bad = _trace("SUBMIT 1", "pwrite 0 65536 data.mdb", "fdatasync 0 0 data.mdb", "pwrite 0 32 data.mdb", "ACK 1")
    assert [v.split(" with ")[0] for v in check_trace(bad, "/s").violations] == ["line 5: ACK 1"]
    # A later group's writes under way at an ack are not that ack's business...
    ahead = _trace("SUBMIT 1", "SUBMIT 2", *commit, "pwrite 0 69632 data.mdb", "ACK 1", "fdatasync 0 0 data.mdb",
                   "pwrite 1 4128 data.mdb", "ACK 2")
    assert check_trace(ahead, "/s").violations == []
    # ...but they are at their own, if no sync came between.
    late = _trace("SUBMIT 1", "SUBMIT 2", *commit, "pwrite 0 69632 data.mdb", "ACK 1", "pwrite 1 4128 data.mdb",
                  "ACK 2")
    assert len(check_trace(late, "/s").violations) == 1
    # Other files do not count, neither as writes nor as syncs; an ack with no commit is reported.
    other = _trace("SUBMIT 1", "pwrite 0 0 checkpoint/data.mdb", "fdatasync 0 0 checkpoint/data.mdb", "ACK 1")
    assert "no commit point" in check_trace(other, "/s").violations[0]
