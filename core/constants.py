"""Every bound of the core, in one place (TigerBeetle: "put a limit on everything").

The engine's own constants (frame sizes, in-flight limits) live in ``engine/constants.py`` and are
derived from these where they must agree. The relationships between bounds are checked at import,
so an inconsistent edit fails loudly rather than at run time.
"""

#: Events in one batch. 8,190 transfers of 128 bytes plus a 128-byte batch header fit 1 MiB.
BATCH_EVENTS_MAX = 8190

#: Engine time (ns since the epoch) must stay below this: 2**63 ns is the year 2262.
NOW_NS_LIMIT = 1 << 63

#: Size of every account and transfer record (docs/data-model.md).
RECORD_SIZE_BYTES = 128

#: Default capacities of the in-memory state (docs/tiering.md): accounts, the hot window of
#: recent transfers (older ones are in the cold tier; about 210 bytes of memory per transfer
#: held), and the pending table (unresolved pending transfers, 200 bytes each).
ACCOUNTS_MAX_DEFAULT = 1 << 21
TRANSFERS_HOT_MAX_DEFAULT = 1 << 21
PENDING_MAX_DEFAULT = 1 << 20

#: Orders resident in memory (docs/tables.md "The write-back table"): about 180 bytes each; the
#: rest are in the cold tier. Unpaid orders stay resident: at most this less min(8,190, half).
ORDERS_MAX_DEFAULT = 1 << 18

#: Refunds resident in memory (docs/tables.md), about 180 bytes each; the rest are cold.
REFUNDS_MAX_DEFAULT = 1 << 16
#: Refunds of one order, at most (WeChat Pay's limit).
REFUNDS_PER_ORDER_MAX = 50
#: A paid order may be refunded this long after its payment.
REFUND_WINDOW_S = 365 * 24 * 3600
#: A settlement window (docs/products.md "Settlement"): engine days (UTC), settled T+1.
SETTLEMENT_WINDOW_S = 24 * 3600

#: Open orders (unpaid, or held charges) a batch's start closes at most when their time is
#: up; the others wait for the next batch (a pulse follows at once on an idle server). Each
#: batch's log entry holds the ids it closed (docs/storage.md): notifications read them.
EXPIRIES_PER_BATCH_MAX = 8190

#: Payment codes resident in memory (docs/products.md "Payment codes (built)"), about 180 bytes
#: each; live codes stay resident (at most this less min(8,190, half)), the others are cold.
CODES_MAX_DEFAULT = 1 << 17
#: A code is valid this long after it is issued; a held charge waits this long for confirming.
CODE_VALID_S = 60
CHARGE_HOLD_S = 45
#: The step-up defaults (an issue_codes event's 0): a charge above this many minor units, or
#: after this many code payments in the engine day, waits for the user's confirmation.
NO_PASSWORD_LIMIT_DEFAULT = 300_000
FREE_PAYMENTS_PER_DAY_DEFAULT = 10

#: Red envelopes (docs/products.md "Red envelopes"): packets and claims resident in memory,
#: about 180 bytes each; open packets stay resident (at most this less min(8,190, half)).
ENVELOPES_MAX_DEFAULT = 1 << 17
CLAIMS_MAX_DEFAULT = 1 << 18
#: Shares of one packet, at most; its open life, at most (and the default); its total, by
#: default at most 20,000 minor units (200.00 CNY; the envelope_total limit, set_limits).
ENVELOPE_COUNT_MAX = 10_000
ENVELOPE_EXPIRE_AFTER_MAX_S = 24 * 3600
ENVELOPE_TOTAL_MAX_DEFAULT = 20_000
ENVELOPE_TOTAL_LIMIT_MAX = 1 << 53
#: Expired packets a batch's start refunds at most (the rest at the next batch's start).
ENVELOPE_REFUNDS_PER_BATCH_MAX = 256

#: Coupons (docs/products.md "Coupons and the card pack"): stocks, coupons and holdings (a
#: user's count of a stock's coupons) resident in memory, about 180 bytes each; active stocks
#: stay resident (at most this less min(8,190, half)), the rest are cold.
STOCKS_MAX_DEFAULT = 1 << 16
COUPONS_MAX_DEFAULT = 1 << 18
HOLDINGS_MAX_DEFAULT = 1 << 18
#: Members of merchants' membership cards resident in memory (the rest are cold).
MEMBERS_MAX_DEFAULT = 1 << 18
#: Coupon payments (their requests' records) resident in memory (the rest are cold).
COUPON_PAYMENTS_MAX_DEFAULT = 1 << 18
#: A stock's coupons at most; its life at most; its budget (face x count) at most.
STOCK_COUNT_MAX = 10_000_000
STOCK_VALID_MAX_S = 366 * 24 * 3600
STOCK_BUDGET_MAX = 1 << 62
#: Ended stocks a batch's start returns the budget of, at most (the rest at the next batch's start).
STOCK_ENDS_PER_BATCH_MAX = 256

#: Cross-border payments (docs/products.md "Cross-border payments"): currency pairs with a rate
#: (in memory, 128 bytes each), payments and refunds resident in memory (the rest are cold).
RATES_MAX = 1024
FX_PAYMENTS_MAX_DEFAULT = 1 << 17
FX_REFUNDS_MAX_DEFAULT = 1 << 16
#: A rate at most: 10^9 of the merchant's minor units per payer's minor unit.
RATE_PPB_MAX = 10**18

#: Wallet tiers (docs/products.md "Wallet limits and real-name tiers (built)"): 1 unverified,
#: 2 verified, 3 bank-card linked (0: none, no limits). Each tier's default limits, in minor
#: units of any ledger without limits of its own (CNY figures: per payment, daily, yearly
#: outgoing, and the most the wallet may hold), after the PBOC's class I/II/III accounts
#: (1,000 CNY since opening; 100,000 and 200,000 CNY a year) and its barcode rules (500 to
#: 5,000 CNY a day).
TIERS = 3
TIER_LIMITS_DEFAULT = {
    1: {"payment": 50_000, "daily": 100_000, "yearly": 100_000, "balance": 100_000},
    2: {"payment": 500_000, "daily": 1_000_000, "yearly": 10_000_000, "balance": 10_000_000},
    3: {"payment": 5_000_000, "daily": 10_000_000, "yearly": 20_000_000, "balance": 100_000_000},
}
#: Ledgers (currencies) that may have tier limits of their own (set_tier_limits), beside the
#: defaults: TIERS entries each, scanned for a tiered wallet's debits.
TIER_LEDGERS_MAX = 32

#: Merchants with terms (fee rate, fee and settlement accounts): 128 bytes each, in memory.
MERCHANTS_MAX_DEFAULT = 1 << 17

#: Hard upper bounds on the capacities (dense indexes and ring slots are u32).
ORDERS_MAX_LIMIT = 1 << 30
MERCHANTS_MAX_LIMIT = 1 << 26
REFUNDS_MAX_LIMIT = 1 << 30
CODES_MAX_LIMIT = 1 << 30
ENVELOPES_MAX_LIMIT = 1 << 30
CLAIMS_MAX_LIMIT = 1 << 30
STOCKS_MAX_LIMIT = 1 << 30
COUPONS_MAX_LIMIT = 1 << 30
HOLDINGS_MAX_LIMIT = 1 << 30
MEMBERS_MAX_LIMIT = 1 << 30
COUPON_PAYMENTS_MAX_LIMIT = 1 << 30
FX_PAYMENTS_MAX_LIMIT = 1 << 30
FX_REFUNDS_MAX_LIMIT = 1 << 30
ACCOUNTS_MAX_LIMIT = 1 << 30
TRANSFERS_HOT_MAX_LIMIT = 1 << 31
PENDING_MAX_LIMIT = 1 << 30

#: Transfers per cold-tier epoch: the unit the store writes to LMDB in one transaction (fixed
#: when a data directory is created; recovery and replay write identical epochs). The hot window
#: must hold an epoch plus a batch: transfers_hot_max >= cold_epoch_transfers + BATCH_EVENTS_MAX.
#: Small enough that writing one holds the GIL only briefly (the background thread's NumPy
#: steps): with 524,288, a server at 200,000 requests/s had a p99 spike every epoch (2.6 s).
COLD_EPOCH_TRANSFERS_DEFAULT = 1 << 16

#: Memory of the filter over cold transfer ids: 2**31 bits, about 1 % false positives at
#: 200 M cold transfers (each costs one LMDB lookup in the prefetch, never a wrong answer).
ID_FILTER_BYTES_DEFAULT = 256 << 20

#: Transfer codes are bucketed into this many activity counters per account.
FEATURE_CODE_BUCKETS = 16

#: Results returned by one get_account_transfers call.
ACCOUNT_TRANSFERS_LIMIT_MAX = BATCH_EVENTS_MAX

#: LMDB map size: the most the store may hold on disk. Sparse until written.
LMDB_MAP_SIZE_BYTES_DEFAULT = 64 << 30

#: The journal (docs/journal.md): the ring that makes log entries durable ahead of the LMDB log.
#: It holds the entries acknowledged and not yet sunk into the LMDB log; an entry (at most
#: about 1 MiB) must fit a quarter of it.
JOURNAL_BYTES_DEFAULT = 32 << 20
#: The sink puts the journal's entries into the LMDB log at least this often (and whenever a
#: quarter of the ring is waiting).
JOURNAL_SINK_INTERVAL_S = 0.1

#: Batches applied in memory but not yet committed, at most (the store's commit pipeline).
COMMIT_PIPELINE_DEPTH_DEFAULT = 2
COMMIT_PIPELINE_DEPTH_MAX = 16

#: A checkpoint of the in-memory state is taken after this many logged events, so that recovery
#: replays about this many (a few seconds' worth). Counted in events, not batches: a checkpoint
#: rewrites the balances of every account, so under light load (small batches) a count of
#: batches would take one far too often for the replay it saves.
CHECKPOINT_INTERVAL_EVENTS_DEFAULT = 1024 * BATCH_EVENTS_MAX


def _check(condition: bool, what: str) -> None:
    # Not `assert`: these must hold under `python -O` too.
    if not condition:
        raise ImportError(f"core/constants.py is inconsistent: {what}")


_check(BATCH_EVENTS_MAX * RECORD_SIZE_BYTES + RECORD_SIZE_BYTES <= 1 << 20, "a batch must fit 1 MiB")
_check(ACCOUNTS_MAX_DEFAULT <= ACCOUNTS_MAX_LIMIT, "ACCOUNTS_MAX_DEFAULT too large")
_check(TRANSFERS_HOT_MAX_DEFAULT <= TRANSFERS_HOT_MAX_LIMIT, "TRANSFERS_HOT_MAX_DEFAULT too large")
_check(PENDING_MAX_DEFAULT <= PENDING_MAX_LIMIT, "PENDING_MAX_DEFAULT too large")
_check(TRANSFERS_HOT_MAX_DEFAULT >= COLD_EPOCH_TRANSFERS_DEFAULT + 2 * BATCH_EVENTS_MAX,
       "hot window below an epoch + a batch of product events (two legs each)")
_check(ID_FILTER_BYTES_DEFAULT % 64 == 0, "filter size not a multiple of 64 bytes")
_check(sorted(TIER_LIMITS_DEFAULT) == list(range(1, TIERS + 1)) and all(
    t["payment"] <= t["daily"] <= t["yearly"] for t in TIER_LIMITS_DEFAULT.values()), "tier limits out of order")
_check(ACCOUNT_TRANSFERS_LIMIT_MAX <= BATCH_EVENTS_MAX, "page larger than a batch")
