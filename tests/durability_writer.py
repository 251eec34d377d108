"""Child process for the durability test: submits batches, marking each submit and ack in a trace.

    python -m tests.durability_writer DATA_DIR TRACE MODE JOURNAL

Run under the LD_PRELOAD shim of tests/fsync_shim.c with TALLY_SYNC_TRACE=TRACE, so that the
shim's lines (the writes and syncs of the store's files) and this process's "SUBMIT n" (written
just before batch n is handed to the store) and "ACK n" (written as soon as its results are back)
lines land in one file, in the order they happened: every line is one write() on an O_APPEND
descriptor of that file.

MODE is how results are waited for:

* ``blocking``: ``store.create_accounts`` / ``store.create_transfers``, one batch at a time;
* ``pipelined``: ``store.submit`` with several batches in flight, each acked once its
  ``PendingBatch.result()`` returns (oldest first, as soon as it is done or the window is full),
  so that acks are written while later batches are being committed;
* ``callback``: ``store.submit``, each batch acked from ``PendingBatch.add_done_callback``, on the
  commit thread: the earliest moment a server can learn that a batch is done.
* ``staged``: the server's form: ``store.stage`` a few batches (more than the pipeline holds,
  so that ``stage`` itself commits some), ``store.commit_staged``, then ack them; in every
  fourth round the last batch goes through ``store.submit`` instead, after the others were
  staged (submit commits them first), so that the two writers of the journal alternate.

JOURNAL is ``as-is`` (as core/store.py opens it), or ``journal-unsynced``: its ``fdatasync``
left out (the test's negative control).
"""

import collections
import os
import sys

import core
from core.store import OPERATION_CREATE_ACCOUNTS, OPERATION_CREATE_TRANSFERS
from tests import workload

TRANSFER_BATCHES = {"blocking": 12, "pipelined": 24, "callback": 24, "staged": 24}
PIPELINE_DEPTH = 4   # commit_pipeline_depth of the pipelined modes
WINDOW = 6           # batches submitted but not yet acked, at most (pipelined mode)
STAGED_PER_ROUND = PIPELINE_DEPTH + 2  # batches staged before commit_staged (staged mode)


def _unsync_the_journal() -> None:
    """Make every journal the store opens skip its fdatasync (the negative control)."""
    from core import journal

    real_init = journal.Journal.__init__

    def init_unsynced(self, path, capacity_bytes, *, sync=True):
        real_init(self, path, capacity_bytes, sync=False)

    journal.Journal.__init__ = init_unsynced


def main():
    data_dir, trace_path, mode, journal_mode = sys.argv[1:5]
    trace = os.open(trace_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def mark(text: str) -> None:
        os.write(trace, (text + "\n").encode())

    if journal_mode == "journal-unsynced":
        _unsync_the_journal()
    elif journal_mode != "as-is":
        sys.exit(f"durability_writer: unknown journal mode {journal_mode}")
    store = core.open(data_dir, accounts_max=100, transfers_hot_max=100_000,
                      checkpoint_interval_batches=3,  # checkpoints (unsynced, by design) run too
                      commit_pipeline_depth=1 if mode == "blocking" else PIPELINE_DEPTH)
    mark("OPEN")
    batches = [(OPERATION_CREATE_ACCOUNTS, workload.account_batch(), workload.now_ns(0))]
    batches += [(OPERATION_CREATE_TRANSFERS, workload.transfer_batch(seed), workload.now_ns(seed))
                for seed in range(1, TRANSFER_BATCHES[mode] + 1)]

    def check(sequence, results, batch):
        if results.shape != (len(batch),):
            sys.exit(f"durability_writer: batch {sequence}: {results.shape} results for {len(batch)} events")

    if mode == "blocking":
        for operation, batch, now_ns in batches:
            sequence = store.sequence + 1
            mark(f"SUBMIT {sequence}")
            if operation == OPERATION_CREATE_ACCOUNTS:
                results = store.create_accounts(batch, now_ns)
            else:
                results = store.create_transfers(batch, now_ns)
            mark(f"ACK {sequence}")
            check(sequence, results, batch)
            if store.sequence != sequence:
                sys.exit(f"durability_writer: acked batch {sequence}, store at {store.sequence}")
    elif mode == "pipelined":
        in_flight = collections.deque()

        def ack_oldest():
            pending, batch = in_flight.popleft()
            results = pending.result()
            mark(f"ACK {pending.sequence}")
            check(pending.sequence, results, batch)

        for number, (operation, batch, now_ns) in enumerate(batches, start=store.sequence + 1):
            mark(f"SUBMIT {number}")
            pending = store.submit(operation, batch, now_ns)
            assert pending.sequence == number, (pending.sequence, number)
            in_flight.append((pending, batch))
            while in_flight and (in_flight[0][0].done() or len(in_flight) >= WINDOW):
                ack_oldest()
        while in_flight:
            ack_oldest()
    elif mode == "callback":
        # Callbacks run before result() could return (it would wait for them): results are
        # checked below, after all of them, and a failed commit ends the run with an error.
        submitted = []
        for number, (operation, batch, now_ns) in enumerate(batches, start=store.sequence + 1):
            mark(f"SUBMIT {number}")
            pending = store.submit(operation, batch, now_ns)
            assert pending.sequence == number, (pending.sequence, number)
            pending.add_done_callback(lambda done: mark(f"ACK {done.sequence}"))
            submitted.append((pending, batch))
        for pending, batch in submitted:
            check(pending.sequence, pending.result(), batch)
    elif mode == "staged":
        rounds = [batches[i:i + STAGED_PER_ROUND] for i in range(0, len(batches), STAGED_PER_ROUND)]
        for round_number, round_batches in enumerate(rounds):
            staged = []
            for operation, batch, now_ns in round_batches:
                number = staged[-1][0].sequence + 1 if staged else store.sequence + 1
                mark(f"SUBMIT {number}")
                if round_number % 4 == 3 and len(staged) == len(round_batches) - 1:
                    pending = store.submit(operation, batch, now_ns)
                    pending.add_done_callback(lambda done: mark(f"ACK {done.sequence}"))
                    staged.append((pending, batch, False))
                    continue
                pending = store.stage(operation, batch, now_ns)
                assert pending.sequence == number, (pending.sequence, number)
                staged.append((pending, batch, True))
            store.commit_staged()
            for pending, batch, acked_here in staged:
                results = pending.result()
                if acked_here:
                    mark(f"ACK {pending.sequence}")
                check(pending.sequence, results, batch)
    else:
        sys.exit(f"durability_writer: unknown mode {mode}")
    store.close()
    mark("CLOSED")


if __name__ == "__main__":
    main()
