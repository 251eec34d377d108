"""Tally's compiled core: records, the ledger state machine, and the durable LMDB store.

>>> import core
>>> led = core.Ledger(accounts_max=100, transfers_hot_max=1000)
>>> led.create_accounts(core.accounts_from_dicts([
...     {"id": 1, "ledger": core.Currency.CNY, "code": core.AccountCode.funding_card},
...     {"id": 2, "ledger": core.Currency.CNY, "code": core.AccountCode.user_wallet,
...      "flags": core.AccountFlags.debits_must_not_exceed_credits}]), now_ns=1).tolist()
[0, 0]

The compiled extensions are required: there is no pure-Python fallback, and importing without
them fails loudly (build with ``pip install -e .``).
"""

try:
    from core.records import (
        ACCOUNT_DTYPE, TRANSFER_DTYPE, ID_DTYPE, Result, AccountFlags, TransferFlags, AccountCode,
        TransferCode, Currency, accounts_from_dicts, transfers_from_dicts, to_dicts, ids_array,
    )
    from core.ledger import Ledger
    from core.idmap import IdMap
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "Tally's compiled core is not built: run `pip install -e .` (see README.md)"
    ) from error

from core import constants
from core.constants import BATCH_EVENTS_MAX
from core.ids import new_id, new_ids

__all__ = [
    "ACCOUNT_DTYPE", "TRANSFER_DTYPE", "ID_DTYPE", "Result", "AccountFlags", "TransferFlags",
    "AccountCode", "TransferCode", "Currency", "accounts_from_dicts", "transfers_from_dicts",
    "to_dicts", "ids_array", "Ledger", "IdMap", "constants", "BATCH_EVENTS_MAX", "new_id", "new_ids",
]

from core.store import Store, StoreError, StoreFailedError, RecoveryStats, open  # noqa: E402,A004

__all__ += ["Store", "StoreError", "StoreFailedError", "RecoveryStats", "open"]
