"""The state hash: one digest of a ledger's whole state, history included, without reading it.

``tally replay-log`` compares it between a store and its log replayed (docs/storage.md); it
lives with the state it covers, and both ``core.store`` and ``core.replay_log`` use it.

What it covers (docs/tiering.md): the accounts (records and balances with their features), the
unresolved pending transfers (by number), the scalars (counts, last timestamp) and every
transfer ever applied, through a *chain* of epoch digests: epoch ``e`` (transfers
``[e*E, (e+1)*E)``) has a digest of its rows and of the pending statuses resolved in it, and the
chain is ``H(chain || digest)`` from the first epoch on. The store keeps the chain of the epochs
in its cold tier; complete epochs not yet written there, and the open epoch, are digested from
memory. So the hash does not depend on when the cold tier was written, on the hot window's size,
on the pending table's layout, or on the capacities: only on the content.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

from core import codec, constants

#: Versions the hash's encoding: a change to it (not to the state) changes every hash.
STATE_HASH_DOMAIN = b"tally state hash 2\n"
STATE_HASH_DIGEST_BYTES = 32
EPOCH_DIGEST_DOMAIN = b"tally epoch 1\n"
#: The chain before the first epoch.
CHAIN_EMPTY = bytes(STATE_HASH_DIGEST_BYTES)

_LENGTH = struct.Struct("<Q")


def epoch_digest(packed_rows, statuses: np.ndarray) -> bytes:
    """Digest of one epoch: its transfer rows in order, packed by ``core.codec`` (canonical, and
    a fifth of the bytes to hash), given whole or in consecutive parts; then its statuses."""
    digest = hashlib.blake2b(EPOCH_DIGEST_DOMAIN, digest_size=STATE_HASH_DIGEST_BYTES)
    parts = [packed_rows] if isinstance(packed_rows, (bytes, bytearray, memoryview)) else packed_rows
    digest.update(_LENGTH.pack(sum(len(part) for part in parts)))
    for part in parts:
        digest.update(part)  # hashlib drops the GIL for large buffers
    raw = np.ascontiguousarray(statuses).view(np.uint8).reshape(-1)
    digest.update(_LENGTH.pack(raw.shape[0]))
    digest.update(raw)
    return digest.digest()


def chain_next(chain: bytes, digest: bytes) -> bytes:
    """The chain after one more epoch."""
    return hashlib.blake2b(chain + digest, digest_size=STATE_HASH_DIGEST_BYTES).digest()


def state_hash(ledger, *, epoch_transfers: int = constants.COLD_EPOCH_TRANSFERS_DEFAULT,
               chain: bytes = CHAIN_EMPTY, chained_epochs: int = 0, parts: dict | None = None) -> str:
    """Hex BLAKE2b-256 digest of a ledger's state.

    ``chain`` is the chain over the first ``chained_epochs`` epochs (a store's cold tier); the
    ledger must hold every transfer after them in memory. A bare ``Ledger`` passes neither.
    ``parts`` are the in-memory parts covered (default: the ledger's ``hash_parts``; a store
    passes its machine's: the ledger's and the product tables').
    """
    count = ledger.transfer_count
    complete = count // epoch_transfers
    for epoch in range(chained_epochs, complete):
        first, last = epoch * epoch_transfers, (epoch + 1) * epoch_transfers
        chain = chain_next(chain, epoch_digest(codec.pack(ledger.transfers_range(first, last)),
                                               ledger.resolved_between(first, last)))
    tail_first = complete * epoch_transfers
    tail = epoch_digest(codec.pack(ledger.transfers_range(tail_first, count)), ledger.resolved_between(tail_first, count))
    _, scalars = ledger.snapshot()
    parts = ledger.hash_parts() if parts is None else parts
    digest = hashlib.blake2b(STATE_HASH_DOMAIN, digest_size=STATE_HASH_DIGEST_BYTES)
    digest.update(_LENGTH.pack(len(parts)))
    for name in sorted(parts):
        array = np.ascontiguousarray(parts[name]).reshape(-1)
        raw = array.view(np.uint8)
        _update_text(digest, name)
        _update_text(digest, str(array.dtype.descr))
        digest.update(_LENGTH.pack(array.shape[0]))
        digest.update(_LENGTH.pack(raw.shape[0]))
        digest.update(raw)
    digest.update(_LENGTH.pack(epoch_transfers))
    digest.update(chain)
    digest.update(tail)
    kept = {name: scalars[name] for name in ("account_count", "transfer_count", "last_timestamp")}
    digest.update(_LENGTH.pack(len(kept)))
    for name in sorted(kept):
        _update_text(digest, name)
        digest.update(_LENGTH.pack(int(kept[name])))
    return digest.hexdigest()


def _update_text(digest, text: str) -> None:
    encoded = text.encode()
    digest.update(_LENGTH.pack(len(encoded)))
    digest.update(encoded)
