"""The merchant side of a load run, read back from the server: its orders, code charges, refunds,
fees and accounts.

A run whose mix has ``qr_order``, ``order_refund`` and ``payment_code`` (``loadgen.generator``)
leaves orders, code charges' orders and refunds on the server; its trace (``--record``) holds
each of its requests with the result code it was answered. ``read_back`` looks the trace's
orders (QR and code) and refunds, the run's fee account and (given) all its accounts up over the
client library (``lookup_orders``, ``lookup_refunds``, ``lookup_accounts``);
``disagreements`` compares them, order by order and refund by refund, with the answers the
trace holds; ``figures`` and ``summary`` say what it came to; ``audit`` does it all for a
finished run (``tally demo`` prints it).

What must hold, exactly (docs/products.md):

* every order created ``ok`` is there; those paid ``ok`` are paid, by that payer (``SUCCESS``,
  or ``REFUND`` once refunded in full); those closed ``ok`` are ``CLOSED`` by their merchant;
  the others are ``NOTPAY`` (or ``CLOSED`` by expiry, once ``expire_after_s`` has passed);
* every refund answered ``ok`` is there with its amount, and an order's ``refunded`` is the sum
  of its refunds;
* a paid order's fee is ``floor(amount × fee_bps / 10,000)``, and after its refunds exactly
  ``floor(fee × refunded / amount)`` of it has come back;
* every code charge answered ``ok`` or ``user_paying`` made its order (kind code, the charge's
  merchant and amount); those answered ``ok`` and the held ones confirmed ``ok`` are paid
  (``SUCCESS``; a confirmed one by the confirming wallet), those declined or revoked ``ok`` are
  ``CLOSED`` with ``close_reason`` ``declined`` / ``revoked``, the other held ones still
  ``USERPAYING`` or ``CLOSED`` by ``timeout``; a paid one's fee is the merchant's, the others' 0;
* the fee account's balance (credits − debits) is the fees taken (orders and code charges)
  minus the fees returned;
* with the run's accounts read back (``audit`` does): per currency, debits equal credits, posted
  and pending, and each account's pending debits are exactly its open holds: the run's holds
  that no capture or void answered ``ok`` resolved, and its code charges still held (an ended
  hold leaves nothing pending).

Settlement moves each merchant's net (paid − refunded − fees + fees returned) of a closed engine
day to its settlement account, T+1 (``tally settle``): a run's sales are today's, so the summary
gives the net the next settlement will move (docs/products.md "Settlement").
"""

from __future__ import annotations

import numpy as np

import core
from core.operations import Operation
from engine.constants import EVENTS_PER_REQUEST_MAX
from loadgen import trace
from loadgen.generator import Kind, Population
from loadgen.trace import TraceData
from loadgen.workload import Workload


def audit(target, trace_path: str, workload: Workload, run_id: int) -> tuple[dict, list[str]]:
    """A finished run's merchant side, read back from the server at ``target`` (a
    ``loadgen.runner.Target``) and checked against its trace: (``figures``, ``disagreements``)."""
    data = trace.read(trace_path)
    population = Population(workload, run_id)
    side = read_back_from(target, data, population.fee_account_id, run_accounts(population))
    return figures(side), disagreements(data, side, workload.orders.fee_bps)


def run_accounts(population: Population) -> np.ndarray:
    """Every account id of a run (``core.ID_DTYPE``): its wallets, merchants, cards, fee and
    settlement accounts."""
    ids = np.zeros(population.accounts, dtype=core.ID_DTYPE)
    ids["lo"], ids["hi"] = np.arange(1, population.accounts + 1, dtype=np.uint64), population.run_id
    return ids


def read_back_from(target, data: TraceData, fee_account_id: int, account_ids: np.ndarray | None = None) -> dict:
    """``read_back`` on a connection of its own to the server at ``target``."""
    from engine.client import Client
    from loadgen.runner import loop_runner

    async def read():
        client = await Client.connect(target.host, target.port, client_id=target.client_id, secret=target.secret)
        try:
            return await read_back(client, data, fee_account_id, account_ids)
        finally:
            client.close()

    return loop_runner()(read())


async def read_back(client, data: TraceData, fee_account_id: int, account_ids: np.ndarray | None = None) -> dict:
    """The trace's orders (QR orders, and code charges' orders) and refunds as the server holds
    them, the fee account and (``account_ids`` given: every account of the run) the accounts."""
    charged = _charged(data)
    return {"orders": await _lookup(client.lookup_orders, _ids(data.records(Operation.create_orders)),
                                    core.ORDER_DTYPE),
            "code_orders": await _lookup(client.lookup_orders, _ids(data.records(Operation.charge_codes, charged),
                                                                    "order_id"), core.ORDER_DTYPE),
            "refunds": await _lookup(client.lookup_refunds, _ids(data.records(Operation.refund_orders)),
                                     core.REFUND_DTYPE),
            "fee_account": await client.lookup_accounts(core.ids_array([fee_account_id])),
            "accounts": (await _lookup(client.lookup_accounts, account_ids, core.ACCOUNT_DTYPE)
                         if account_ids is not None else None)}


def _charged(data: TraceData) -> np.ndarray:
    """The requests that made a code charge's order: ``charge_codes`` answered ok or user_paying."""
    return (data.operation == Operation.charge_codes) & np.isin(data.result, (core.Result.ok, core.Result.user_paying))


async def _lookup(call, ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    parts = [await call(ids[first:first + EVENTS_PER_REQUEST_MAX])
             for first in range(0, len(ids), EVENTS_PER_REQUEST_MAX)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _ids(records: np.ndarray, field: str = "id") -> np.ndarray:
    ids = np.zeros(len(records), dtype=core.ID_DTYPE)
    ids["lo"], ids["hi"] = records[f"{field}_lo"], records[f"{field}_hi"]
    return ids


def _keys(records: np.ndarray, field: str = "id") -> np.ndarray:
    """128-bit ids as sortable 16-byte keys."""
    return _ids(records, field).view("V16")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return len(a) == len(b) and bool(np.array_equal(np.sort(a), np.sort(b)))


def _sorted_by(keys: np.ndarray, *columns: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(keys, kind="stable")
    return [column[order] for column in columns]


def _sum_by(keys: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    """For each key of ``at``, the sum of ``values`` whose key it is (exact: Python ints)."""
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.zeros(len(unique), dtype=object)
    np.add.at(sums, inverse, values.astype(object))
    found = np.minimum(np.searchsorted(unique, at), max(len(unique) - 1, 0))
    hit = (unique[found] == at) if len(unique) else np.zeros(len(at), dtype=bool)
    return np.where(hit, sums[found] if len(unique) else 0, 0)


def disagreements(data: TraceData, side: dict, fee_bps: int) -> list[str]:
    """Where the server's orders, refunds and fee account differ from the trace's answers (empty: nowhere)."""
    ok = data.result == core.Result.ok
    created, paid, refunded = (data.records(operation, ok) for operation in (
        Operation.create_orders, Operation.pay_orders, Operation.refund_orders))
    closed = data.records(Operation.close_orders, ok & (data.kind == Kind.qr_close))
    orders, refunds = side["orders"], side["refunds"]
    problems = []
    keys = _keys(orders)
    if not _same(keys, _keys(created)):
        problems.append(f"{len(created):,} orders created ok, {len(orders):,} of the run's orders found")
    is_paid = orders["paid_at"] != 0
    if not _same(keys[is_paid], _keys(paid, "order_id")):
        problems.append(f"{len(paid):,} payments answered ok, {int(is_paid.sum()):,} orders paid")
    elif not all(np.array_equal(a, b) for a, b in zip(
            _sorted_by(keys[is_paid], orders["payer_id_lo"][is_paid], orders["amount"][is_paid]),
            _sorted_by(_keys(paid, "order_id"), paid["payer_id_lo"], paid["amount"]))):
        problems.append("paid orders whose payer or amount is not their payment's")
    by_merchant = (orders["state"] == core.OrderState.CLOSED) & (orders["close_reason"] == core.CloseReason.merchant)
    if not _same(keys[by_merchant], _keys(closed, "order_id")):
        problems.append(f"{len(closed):,} closes answered ok, {int(by_merchant.sum()):,} orders closed by their merchant")
    rest = ~is_paid & ~by_merchant
    unpaid = (orders["state"] == core.OrderState.NOTPAY) | (
        (orders["state"] == core.OrderState.CLOSED) & (orders["close_reason"] == core.CloseReason.expired))
    if not unpaid[rest].all():
        problems.append(f"{int((~unpaid[rest]).sum()):,} orders neither paid nor closed are not unpaid or expired")
    full = orders["refunded"] == orders["amount"]
    if not np.array_equal(orders["state"][is_paid] == core.OrderState.REFUND, full[is_paid]):
        problems.append("paid orders whose state is not REFUND exactly when refunded in full")

    refund_keys = _keys(refunds)
    if not _same(refund_keys, _keys(refunded)):
        problems.append(f"{len(refunded):,} refunds answered ok, {len(refunds):,} found")
    elif not np.array_equal(_sorted_by(refund_keys, refunds["amount"])[0],
                            _sorted_by(_keys(refunded), refunded["amount"])[0]):
        problems.append("refunds whose amount is not the one asked")
    order_refunds = _sum_by(_keys(refunds, "order_id"), refunds["amount"], keys)
    if not np.array_equal(order_refunds, orders["refunded"].astype(object)):
        problems.append("orders whose refunded amount is not the sum of their refunds")

    amounts, fees = orders["amount"].astype(object), orders["fee"].astype(object)
    expected_fees = np.where(is_paid, amounts * fee_bps // 10_000, 0)
    if not np.array_equal(fees, expected_fees):
        problems.append(f"orders whose fee is not floor(amount x {fee_bps} / 10,000)")
    returned = _sum_by(_keys(refunds, "order_id"), refunds["fee_refunded"], keys)
    if not np.array_equal(returned, np.where(is_paid, fees * orders["refunded"].astype(object) // amounts, 0)):
        problems.append("orders whose fees returned are not floor(fee x refunded / amount)")
    problems += _code_disagreements(data, side, fee_bps)
    if side.get("accounts") is not None:
        problems += _ledger_disagreements(data, side)
    figures_ = figures(side)
    if figures_["fee_account_minor"] != figures_["fees_taken_minor"] - figures_["fees_returned_minor"]:
        problems.append(f"the fee account holds {figures_['fee_account_minor']:,}, fees taken minus returned are "
                        f"{figures_['fees_taken_minor'] - figures_['fees_returned_minor']:,}")
    return problems


def _code_disagreements(data: TraceData, side: dict, fee_bps: int) -> list[str]:
    """The code charges' orders against the run's answers: every charge answered ok or
    user_paying made its order; those answered ok are paid, the held ones confirmed ok are paid
    by the confirming wallet, declined or revoked ok are closed so, and the others are still
    held or timed out; each paid one's fee is the merchant's."""
    ok = data.result == core.Result.ok
    charges = data.records(Operation.charge_codes, _charged(data))
    at_once = data.records(Operation.charge_codes, (data.operation == Operation.charge_codes) & ok)
    confirmed = data.records(Operation.confirm_charges, ok & (data.kind == Kind.code_confirm))
    declined = data.records(Operation.confirm_charges, ok & (data.kind == Kind.code_decline))
    revoked = data.records(Operation.close_orders, ok & (data.kind == Kind.code_revoke))
    orders = side.get("code_orders")
    if orders is None:
        return []
    problems = []
    keys = _keys(orders)
    if not _same(keys, _keys(charges, "order_id")):
        return [f"{len(charges):,} code charges answered ok or user_paying, {len(orders):,} of their orders found"]
    if not (orders["kind"] == core.OrderKind.code).all():
        problems.append("code charges' orders that are not of kind code")
    if not all(np.array_equal(a, b) for a, b in zip(
            _sorted_by(keys, orders["merchant_id_lo"], orders["amount"]),
            _sorted_by(_keys(charges, "order_id"), charges["merchant_id_lo"], charges["amount"]))):
        problems.append("code charges' orders whose merchant or amount is not the charge's")
    state, reason = orders["state"], orders["close_reason"]
    paid = (state == core.OrderState.SUCCESS) & (orders["paid_at"] != 0)
    expected_paid = np.concatenate([_keys(at_once, "order_id"), _keys(confirmed, "order_id")])
    if not _same(keys[paid], expected_paid):
        problems.append(f"{len(at_once):,} charges paid at once and {len(confirmed):,} confirmed ok, "
                        f"{int(paid.sum()):,} code orders paid")
    confirmed_orders = np.isin(keys, _keys(confirmed, "order_id"))
    if not np.array_equal(*(_sorted_by(keys[confirmed_orders], orders["payer_id_lo"][confirmed_orders])
                            + _sorted_by(_keys(confirmed, "order_id"), confirmed["wallet_id_lo"]))):
        problems.append("confirmed code orders whose payer is not the confirming wallet")
    for name, records, close_reason in (("declined", declined, core.CloseReason.declined),
                                        ("revoked", revoked, core.CloseReason.revoked)):
        ended = (state == core.OrderState.CLOSED) & (reason == close_reason)
        if not _same(keys[ended], _keys(records, "order_id")):
            problems.append(f"{len(records):,} code charges {name} ok, {int(ended.sum()):,} orders closed {name}")
    rest = ~np.isin(keys, np.concatenate([expected_paid, _keys(declined, "order_id"), _keys(revoked, "order_id")]))
    left = (state == core.OrderState.USERPAYING) | ((state == core.OrderState.CLOSED)
                                                   & (reason == core.CloseReason.timeout))
    if not left[rest].all():
        problems.append(f"{int((~left[rest]).sum()):,} held code charges neither confirmed, declined nor revoked "
                        "are not still held or timed out")
    expected_fees = np.where(paid, orders["amount"].astype(object) * fee_bps // 10_000, 0)
    if not np.array_equal(orders["fee"].astype(object), expected_fees):
        problems.append(f"code orders whose fee is not floor(amount x {fee_bps} / 10,000) when paid, else 0")
    return problems


def _ledger_disagreements(data: TraceData, side: dict) -> list[str]:
    """The run's accounts: debits equal credits per currency, posted and pending, and each
    account's pending debits are exactly its holds still open: the run's holds no capture or void
    answered ok resolved, and its code charges still held (none left for an ended hold)."""
    accounts, orders = side["accounts"], side.get("code_orders")
    problems = []
    for ledger in np.unique(accounts["ledger"]):
        of = accounts[accounts["ledger"] == ledger]
        for kind in ("posted", "pending"):
            debits, credits = (int(of[f"{side_}_{kind}"].astype(object).sum()) for side_ in ("debits", "credits"))
            if debits != credits:
                problems.append(f"ledger {int(ledger)}: {kind} debits {debits:,} but credits {credits:,}")
    ok = data.result == core.Result.ok
    holds = data.records(Operation.create_transfers, ok & (data.kind == Kind.hold))
    resolved = data.records(Operation.create_transfers, ok & np.isin(data.kind, (Kind.capture, Kind.void)))
    open_holds = holds[~np.isin(_keys(holds), _keys(resolved, "pending_id"))]
    debtors = [open_holds["debit_account_id_lo"]]
    amounts = [open_holds["amount"]]
    if orders is not None:
        held = orders[orders["state"] == core.OrderState.USERPAYING]
        debtors.append(held["payer_id_lo"])
        amounts.append(held["amount"])
    expected = _sum_by(np.concatenate(debtors), np.concatenate(amounts), accounts["id_lo"])
    wrong = expected != accounts["debits_pending"].astype(object)
    if wrong.any():
        problems.append(f"{int(wrong.sum()):,} accounts whose pending debits are not their open holds and held "
                        f"code charges (pending {int(accounts['debits_pending'].astype(object).sum()):,}, open "
                        f"{int(expected.sum()):,})")
    return problems


def figures(side: dict) -> dict:
    """What the merchant side came to: orders by end, refunds, fees (minor units, exact)."""
    orders, refunds, account = side["orders"], side["refunds"], side["fee_account"]
    state, reason = orders["state"], orders["close_reason"]
    paid = orders["paid_at"] != 0
    closed = state == core.OrderState.CLOSED
    codes = side.get("code_orders")
    if codes is None:
        codes = np.zeros(0, core.ORDER_DTYPE)
    code_state, code_reason = codes["state"], codes["close_reason"]
    code_paid = codes["paid_at"] != 0
    code_closed = code_state == core.OrderState.CLOSED
    return {
        "orders": len(orders),
        "paid": int(paid.sum()),
        "refunded_in_full": int((state == core.OrderState.REFUND).sum()),
        "closed_by_merchant": int((closed & (reason == core.CloseReason.merchant)).sum()),
        "expired": int((closed & (reason == core.CloseReason.expired)).sum()),
        "unpaid": int((state == core.OrderState.NOTPAY).sum()),
        "paid_minor": int(orders["amount"][paid].astype(object).sum()),
        "refunds": len(refunds),
        "refunded_minor": int(refunds["amount"].astype(object).sum()),
        "code_charges": len(codes),
        "code_paid": int(code_paid.sum()),
        "code_paid_minor": int(codes["amount"][code_paid].astype(object).sum()),
        "code_held": int((code_state == core.OrderState.USERPAYING).sum()),
        "code_declined": int((code_closed & (code_reason == core.CloseReason.declined)).sum()),
        "code_revoked": int((code_closed & (code_reason == core.CloseReason.revoked)).sum()),
        "code_timed_out": int((code_closed & (code_reason == core.CloseReason.timeout)).sum()),
        "fees_taken_minor": int(orders["fee"].astype(object).sum() + codes["fee"].astype(object).sum()),
        "fees_returned_minor": int(refunds["fee_refunded"].astype(object).sum()),
        "fee_account_minor": (int(account["credits_posted"][0]) - int(account["debits_posted"][0])) if len(account)
                             else 0,
        "accounts_checked": len(side["accounts"]) if side.get("accounts") is not None else 0,
    }


def summary(numbers: dict, problems: list[str]) -> str:
    """A few lines for a person: the orders' ends, the refunds, the fees, and whether all agreed."""
    n = numbers
    lines = [f"merchant side (read back from the server): {n['orders']:,} orders, {n['paid']:,} paid "
             f"({n['paid_minor']:,} minor units)",
             f"  {n['refunded_in_full']:,} of them refunded in full; {n['closed_by_merchant']:,} closed by their "
             f"merchant, {n['expired']:,} expired, {n['unpaid']:,} unpaid",
             f"  {n['refunds']:,} refunds ({n['refunded_minor']:,} minor units); fees taken "
             f"{n['fees_taken_minor']:,}, returned {n['fees_returned_minor']:,}; fee account {n['fee_account_minor']:,}",
             f"  settlement (T+1, `tally settle` tomorrow): net "
             f"{n['paid_minor'] + n['code_paid_minor'] - n['refunded_minor'] - n['fees_taken_minor'] + n['fees_returned_minor']:,} "
             "to the merchants' settlement accounts"]
    if n["code_charges"]:
        lines.insert(3, f"  payment codes: {n['code_charges']:,} charged, {n['code_paid']:,} paid "
                        f"({n['code_paid_minor']:,} minor units), {n['code_declined']:,} declined, "
                        f"{n['code_revoked']:,} revoked, {n['code_timed_out']:,} timed out, {n['code_held']:,} held")
    if problems:
        lines += ["  DISAGREES with the run's answers:"] + [f"    {problem}" for problem in problems]
    else:
        lines.append("  every order's state, every refund and the fee account agree with the run's answers"
                     + ("; the run's accounts balance" if numbers.get("accounts_checked") else ""))
    return "\n".join(lines)
