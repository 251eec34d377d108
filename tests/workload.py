"""Deterministic batches for durability tests: same seed, same batches, in any process."""

import numpy as np

import core

ACCOUNTS = 64

#: Store options for durability tests: a hot window of 4,096 transfers, epochs of 1,024.
TIERS = {"transfers_hot_max": 4096, "cold_epoch_transfers": 1024, "id_filter_bytes": 1 << 16}


def account_batch():
    rows = [{"id": i, "ledger": core.Currency.CNY, "code": core.AccountCode.user_wallet,
             "flags": core.AccountFlags.debits_must_not_exceed_credits} for i in range(1, ACCOUNTS)]
    rows.append({"id": ACCOUNTS, "ledger": core.Currency.CNY, "code": core.AccountCode.funding_card})
    return core.accounts_from_dicts(rows)


def transfer_batch(seed: int, size: int = 200):
    """Top-ups from the funding card, payments between wallets (some fail), pending holds."""
    rng = np.random.default_rng(seed)
    batch = np.zeros(size, dtype=core.TRANSFER_DTYPE)
    batch["id_lo"] = seed * 1_000_000 + np.arange(1, size + 1)
    debit = rng.integers(1, ACCOUNTS + 1, size)
    credit = rng.integers(1, ACCOUNTS, size)
    credit = np.where(credit == debit, (credit % (ACCOUNTS - 1)) + 1, credit)
    batch["debit_account_id_lo"] = debit
    batch["credit_account_id_lo"] = credit
    batch["amount"] = rng.integers(1, 5_000, size)
    batch["ledger"] = core.Currency.CNY
    batch["code"] = core.TransferCode.p2p
    batch["flags"] = np.where(rng.random(size) < 0.2, core.TransferFlags.pending, 0)
    batch["timeout"] = np.where(batch["flags"] == core.TransferFlags.pending, rng.integers(0, 3, size), 0)
    return batch


def now_ns(seed: int) -> int:
    return 1_700_000_000_000_000_000 + seed * 700_000_000
