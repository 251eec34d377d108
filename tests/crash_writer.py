"""Child process for the crash test: applies deterministic batches, acknowledging each on stdout.

    python -m tests.crash_writer DATA_DIR CHECKPOINT_INTERVAL

Prints "ack N" after batch N is committed (the store returned). Runs until killed.
"""

import sys

import core
from core.store import JOURNAL_BYTES_MIN
from tests import workload


def main():
    data_dir, interval = sys.argv[1], int(sys.argv[2])
    # A small hot window: most of the history goes to the cold tier while the kills land; the
    # smallest journal: it wraps every few dozen batches, so kills land across its laps too.
    store = core.open(data_dir, accounts_max=100, checkpoint_interval_batches=interval,
                      journal_bytes=JOURNAL_BYTES_MIN, **workload.TIERS)
    if store.sequence == 0:
        store.create_accounts(workload.account_batch(), workload.now_ns(0))
        print("ack 1", flush=True)
    while True:
        seed = store.sequence  # batch N+1 is transfers of seed N
        store.create_transfers(workload.transfer_batch(seed, size=1000), workload.now_ns(seed))
        print(f"ack {store.sequence}", flush=True)


if __name__ == "__main__":
    main()
