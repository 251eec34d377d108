"""`tally settle`: close a settlement window for every merchant, and report it.

The server's merchants (``list_merchants``, in pages) are settled through ``window`` (an engine
day; default yesterday by this machine's clock: T+1) with ``settle_merchants``, a page of
merchants per request; then their settlements are read back (``lookup_settlements``) and each
settlement transfer is read from the ledger (``lookup_transfers``) to reconcile: the report's
rows are the ledger's, to the minor unit, or the run says where they differ. A re-run of the
same window changes nothing (each merchant answers ``exists``) and writes the same report.

Writes ``settlement-<window>.csv`` (one row per merchant, then a total row per currency) and
``settlement-<window>.json`` (the rows, the totals and the reconciliation) into ``out_dir``.
"""

from __future__ import annotations

import csv
import json
import os
import time

import numpy as np

import core
from core import constants, id_values

#: Merchants per request (a page of list_merchants, a settle_merchants batch, a lookup).
PAGE = constants.BATCH_EVENTS_MAX
AMOUNT_FIELDS = ("paid", "refunded", "fees", "fees_returned", "net")
#: One merchant's line of the report (vectorized: a page of merchants is a few array operations).
ROW_DTYPE = np.dtype([("merchant_id", "V16"), ("ledger", "<u4"), ("result", "<u4"), ("settled", "?"),
                      ("paid", "<u8"), ("refunded", "<u8"), ("fees", "<u8"), ("fees_returned", "<u8"),
                      ("net", "<i8"), ("moved", "<u8"), ("settlement_account_id", "V16"), ("transfer_id", "V16")])


def window_of(unix_ns: int) -> int:
    """The settlement window holding ``unix_ns`` (engine time is Unix time in ns)."""
    return unix_ns // (constants.SETTLEMENT_WINDOW_S * 10**9)


def yesterday() -> int:
    """The last window closed by this machine's clock (T+1)."""
    return window_of(time.time_ns()) - 1


def settle(client, window: int) -> dict:
    """Settle every merchant through ``window`` over ``client`` (an ``engine.client.BlockingClient``);
    returns the report: ``rows`` (ROW_DTYPE, one per merchant), ``totals`` per currency,
    ``reconciled`` and the merchants whose lines differ from the ledger (``differences``)."""
    started = time.perf_counter()
    pages, differences = [], []
    offset = 0
    while True:
        merchants = client.list_merchants(offset, PAGE)
        if not merchants.shape[0]:
            break
        offset += merchants.shape[0]
        events = np.zeros(merchants.shape[0], dtype=core.SETTLEMENT_DTYPE)
        for field in ("merchant_id_lo", "merchant_id_hi", "ledger"):
            events[field] = merchants[field]
        events["window"] = window
        rows = np.zeros(merchants.shape[0], dtype=ROW_DTYPE)
        rows["result"] = client.settle_merchants(events)
        rows["ledger"] = merchants["ledger"]
        rows["merchant_id"] = id_values.of_field(merchants, "merchant_id")
        _fill_settled(client, rows, window, differences)
        pages.append(rows)
    rows = np.concatenate(pages) if pages else np.zeros(0, dtype=ROW_DTYPE)
    settle_s = time.perf_counter() - started
    return {"window": window, "merchants": int(rows.shape[0]), "rows": rows, "totals": _totals(rows),
            "reconciled": not differences, "differences": differences, "seconds": round(settle_s, 3),
            "merchants_per_s": round(rows.shape[0] / settle_s) if settle_s else 0}


def _as_ids(values: np.ndarray) -> np.ndarray:
    """16-byte values as an ID_DTYPE array (for a lookup)."""
    return np.ascontiguousarray(values).view(core.ID_DTYPE)


def _positions(keys: np.ndarray, among: np.ndarray) -> np.ndarray:
    """For each of ``keys`` (V16), its index in ``among`` (V16, distinct), or -1."""
    if not among.shape[0]:
        return np.full(keys.shape[0], -1)
    order = np.argsort(among)
    at = np.minimum(np.searchsorted(among[order], keys), among.shape[0] - 1)
    return np.where(among[order][at] == keys, order[at], -1)


def _fill_settled(client, rows: np.ndarray, window: int, differences: list) -> None:
    """The settlements through ``window`` of a page's merchants, checked against the ledger's
    transfers: the amounts into ``rows``, any disagreement into ``differences``."""
    kept = client.lookup_settlements(_as_ids(rows["merchant_id"]))
    kept = kept[kept["window"] == window]
    at = _positions(rows["merchant_id"], id_values.of_field(kept, "merchant_id"))
    mine = at >= 0
    kept = kept[at[mine]]
    rows["settled"] = mine
    for field in AMOUNT_FIELDS:
        rows[field][mine] = kept[field]
    rows["settlement_account_id"][mine] = id_values.of_field(kept, "settlement_account_id")
    rows["transfer_id"][mine] = id_values.of_field(kept, "transfer_id")
    transfer_ids = id_values.of_field(kept, "transfer_id")
    with_transfer = kept["net"] > 0
    found = client.lookup_transfers(_as_ids(transfer_ids[with_transfer])) if with_transfer.any() \
        else np.zeros(0, dtype=core.TRANSFER_DTYPE)
    where = _positions(transfer_ids, id_values.of_field(found, "id"))
    moved = np.zeros(kept.shape[0], dtype=np.uint64)
    has = where >= 0
    moved[has] = found["amount"][where[has]]
    rows["moved"][mine] = moved
    wrong = with_transfer & ~has
    transfers = found[where[has]]
    agrees = ((transfers["amount"] == kept["net"][has].astype(np.uint64))
              & (id_values.of_field(transfers, "debit_account_id") == id_values.of_field(kept[has], "merchant_id"))
              & (id_values.of_field(transfers, "credit_account_id")
                 == id_values.of_field(kept[has], "settlement_account_id"))
              & (transfers["code"] == core.TransferCode.order_settlement))
    wrong[np.flatnonzero(has)[~agrees]] = True
    wrong |= ~with_transfer & (moved != 0)
    arithmetic = (kept["paid"].astype(object) - kept["refunded"] - kept["fees"] + kept["fees_returned"]
                  != kept["net"].astype(object))
    for index in np.flatnonzero(wrong | arithmetic.astype(bool)).tolist():
        differences.append({"merchant_id": _int(id_values.of_field(kept[index:index + 1], "merchant_id")[0]),
                            "why": "the ledger's transfer differs from the settlement" if wrong[index]
                            else "net is not paid - refunded - fees + fees returned"})


def _int(value) -> int:
    return int.from_bytes(bytes(value), "little")


def _totals(rows: np.ndarray) -> dict:
    """Per currency (ledger): the sums of the settled rows and how many merchants were settled."""
    totals = {}
    for ledger in np.unique(rows["ledger"][rows["settled"]]).tolist():
        mine = rows[rows["settled"] & (rows["ledger"] == ledger)]
        totals[str(ledger)] = {field: int(mine[field].sum(dtype=np.int64 if field == "net" else np.uint64))
                               for field in (*AMOUNT_FIELDS, "moved")} | {"merchants": int(mine.shape[0])}
    return totals


def report_rows(report: dict) -> list[dict]:
    """The report's rows as dicts (ints, and the result's name)."""
    rows = report["rows"]
    out = []
    for row, merchant, account, transfer in zip(rows.tolist(), rows["merchant_id"].tolist(),
                                                rows["settlement_account_id"].tolist(), rows["transfer_id"].tolist()):
        line = {"merchant_id": _int(merchant), "ledger": row[1], "result": core.Result(row[2]).name,
                "window": report["window"]}
        if row[3]:
            line.update(zip(("paid", "refunded", "fees", "fees_returned", "net", "moved"), row[4:10]),
                        settlement_account_id=_int(account), transfer_id=_int(transfer))
        out.append(line)
    return out


def write(report: dict, out_dir: str) -> tuple[str, str]:
    """The report as CSV and JSON in ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"settlement-{report['window']}")
    columns = ["merchant_id", "ledger", "result", "window", *AMOUNT_FIELDS, "moved", "settlement_account_id",
               "transfer_id"]
    with open(f"{stem}.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, columns, extrasaction="ignore")
        writer.writeheader()
        rows = report_rows(report)
        writer.writerows(rows)
        for ledger, total in report["totals"].items():
            writer.writerow(dict(total, merchant_id="total", ledger=ledger, result=f"{total['merchants']} settled",
                                 window=report["window"]))
    with open(f"{stem}.json", "w") as out:
        json.dump(dict(report, rows=rows), out, indent=1)
    return f"{stem}.csv", f"{stem}.json"


def summary(report: dict) -> str:
    """A few lines for a person: per currency, merchants settled and amounts; reconciliation."""
    lines = [f"settlement of window {report['window']}: {report['merchants']} merchants in {report['seconds']} s"]
    for ledger, total in report["totals"].items():
        lines.append(f"  ledger {ledger}: {total['merchants']} settled, paid {total['paid']}, refunded "
                     f"{total['refunded']}, fees {total['fees'] - total['fees_returned']}, net {total['net']}, "
                     f"moved {total['moved']}")
    lines.append("  reconciled with the ledger: " + ("yes" if report["reconciled"] else
                                                    f"NO ({len(report['differences'])} differences)"))
    return "\n".join(lines)
