"""The red envelopes of a load run, read back from the server: its packets, their claims, the
claims' transfers and the escrow account.

A run whose mix has ``red_envelope`` (``loadgen.generator``) leaves packets and claims on the
server; its trace (``--record``, format 1.3) holds each send and claim with the result code it
was answered, and each claim's answered share and position. ``read_back`` looks the trace's
packets up over the client library (``lookup_envelopes``), the claims answered ``ok`` by their
ids (``lookup_envelope_claims``: "did this user claim it, and what"), the claims' transfers
(``lookup_transfers``: who claimed what, when) and the run's escrow account;
``disagreements`` compares them with the run's answers; ``figures`` and ``summary`` say what it
came to; ``audit`` does it all for a finished run (``tally demo`` prints it).

What must hold, exactly (docs/products.md "Red envelopes"):

* every packet sent ``ok`` is there (and no other), with its sender, total and count;
* its ``claimed`` is the number of its claims answered ``ok``, which took the positions 0 ..
  claimed − 1, once each; each claim is there with the claimer, position and share it was
  answered (every share ≥ 1), and its transfer moved that share from the escrow to the claimer;
* ``total = remaining + refunded + its shares``; a packet is ``EMPTY`` exactly when every
  share was claimed, and then its shares sum to its total; a late claim (``envelope_empty``)
  names an emptied packet;
* the escrow's balance (credits − debits) is the sum of the run's packets' ``remaining`` (the
  open ones': an ended packet keeps nothing there).
"""

from __future__ import annotations

import numpy as np

import core
from core.operations import Operation
from core.order_keys import claim_ids
from loadgen import trace
from loadgen.generator import Population
from loadgen.merchant_side import _ids, _keys, _lookup, _same, _sorted_by, _sum_by
from loadgen.trace import TraceData
from loadgen.workload import Workload


def audit(target, trace_path: str, workload: Workload, run_id: int) -> tuple[dict, list[str]]:
    """A finished run's red envelopes, read back from the server at ``target`` (a
    ``loadgen.runner.Target``) and checked against its trace: (``figures``, ``disagreements``)."""
    data = trace.read(trace_path)
    side = read_back_from(target, data, Population(workload, run_id).escrow_account_id)
    return figures(data, side), disagreements(data, side)


def read_back_from(target, data: TraceData, escrow_account_id: int) -> dict:
    """``read_back`` on a connection of its own to the server at ``target``."""
    from engine.client import Client
    from loadgen.runner import loop_runner

    async def read():
        client = await Client.connect(target.host, target.port, client_id=target.client_id, secret=target.secret)
        try:
            return await read_back(client, data, escrow_account_id)
        finally:
            client.close()

    return loop_runner()(read())


def _claimed(data: TraceData) -> np.ndarray:
    """The claims answered ok."""
    return (data.operation == Operation.claim_envelopes) & (data.result == core.Result.ok)


def _claim_ids(claims: np.ndarray) -> np.ndarray:
    """The claim records' ids of these ``claim_envelopes`` events, as ``core.ID_DTYPE``."""
    ids = claim_ids(np.stack([claims["envelope_id_lo"], claims["envelope_id_hi"]], axis=1),
                    np.stack([claims["claimer_id_lo"], claims["claimer_id_hi"]], axis=1))
    return np.ascontiguousarray(ids).view(core.ID_DTYPE).reshape(-1)


async def read_back(client, data: TraceData, escrow_account_id: int) -> dict:
    """The trace's packets, its claims answered ok and their transfers as the server holds them,
    and the escrow account."""
    sent = (data.operation == Operation.send_envelopes) & (data.result == core.Result.ok)
    claims = await _lookup(client.lookup_envelope_claims,
                           _claim_ids(data.records(Operation.claim_envelopes, _claimed(data))), core.CLAIM_DTYPE)
    return {"packets": await _lookup(client.lookup_envelopes, _ids(data.records(Operation.send_envelopes, sent)),
                                     core.ENVELOPE_DTYPE),
            "claims": claims,
            "claim_transfers": await _lookup(client.lookup_transfers, _ids(claims, "transfer_id"), core.TRANSFER_DTYPE),
            "escrow": await client.lookup_accounts(core.ids_array([escrow_account_id]))}


def disagreements(data: TraceData, side: dict) -> list[str]:
    """Where the server's packets, claims, their transfers and the escrow differ from the trace's
    answers (empty: nowhere)."""
    ok = data.result == core.Result.ok
    sent = data.records(Operation.send_envelopes, ok)
    claimed = _claimed(data)
    claims = data.records(Operation.claim_envelopes, claimed)
    shares, positions = data.claimed_amount[claimed], data.claimed_position[claimed]
    late = data.records(Operation.claim_envelopes, data.result == core.Result.envelope_empty)
    packets, records, transfers = side["packets"], side["claims"], side["claim_transfers"]
    problems = []
    keys = _keys(packets)
    if not _same(keys, _keys(sent)):
        return [f"{len(sent):,} packets sent ok, {len(packets):,} of the run's packets found"]
    if not all(np.array_equal(a, b) for a, b in zip(
            _sorted_by(keys, packets["sender_id_lo"], packets["total"], packets["count"]),
            _sorted_by(_keys(sent), sent["sender_id_lo"], sent["total"], sent["count"]))):
        problems.append("packets whose sender, total or count is not their send's")

    # Each packet's claims answered ok: how many, their shares, their positions 0 .. claimed - 1.
    of_packet = _keys(claims, "envelope_id")
    counted = _sum_by(of_packet, np.ones(len(claims), dtype=np.uint64), keys)
    claimed_sums = _sum_by(of_packet, shares, keys)
    if not np.array_equal(packets["claimed"].astype(object), counted):
        problems.append(f"packets whose claimed count is not their claims answered ok ({len(claims):,} of them)")
    order = np.lexsort((positions, of_packet))
    firsts = np.r_[True, of_packet[order][1:] != of_packet[order][:-1]] if len(order) else np.zeros(0, bool)
    starts = np.maximum.accumulate(np.where(firsts, np.arange(len(order)), 0)) if len(order) else order
    if not np.array_equal(positions[order], np.arange(len(order)) - starts):
        problems.append("packets whose claims answered ok did not take the positions 0, 1, ... once each")
    if len(shares) and int(shares.min()) < 1:
        problems.append(f"{int((shares < 1).sum()):,} claims answered ok with a share below 1")
    total, remaining, refunded = (packets[name].astype(object) for name in ("total", "remaining", "refunded"))
    if not np.array_equal(total, remaining + refunded + claimed_sums):
        problems.append("packets whose total is not their remaining + refunded + the shares their claims were answered")
    empty = packets["state"] == core.EnvelopeState.EMPTY
    if not np.array_equal(empty, packets["claimed"] == packets["count"]):
        problems.append("packets EMPTY not exactly when every share was claimed")
    if not np.array_equal(claimed_sums[empty], total[empty]):
        problems.append("emptied packets whose shares do not sum to their total")
    if not np.isin(_keys(late, "envelope_id"), keys[empty]).all():
        problems.append("late claims (envelope_empty) of a packet that is not emptied")

    # The claim records and their transfers: the claimer, position and share each was answered.
    if not _same(_keys(records), _claim_ids(claims).view("V16")):
        problems.append(f"{len(claims):,} claims answered ok, {len(records):,} claim records found")
    elif not all(np.array_equal(a, b) for a, b in zip(
            _sorted_by(_keys(records, "envelope_id"), records["position"], records["amount"], records["claimer_id_lo"]),
            _sorted_by(of_packet, positions, shares, claims["claimer_id_lo"]))):
        problems.append("claim records whose position, share or claimer is not what the claim was answered")
    escrow = side["escrow"]
    if not _same(_keys(transfers), _keys(records, "transfer_id")):
        problems.append(f"{len(records):,} claim records, {len(transfers):,} of their transfers found")
    elif len(escrow) and not _transfers_agree(transfers, records, escrow):
        problems.append("claim transfers that do not move the claim's share from the escrow to its claimer")

    # The escrow holds what the packets still hold.
    if len(escrow) != 1:
        problems.append("the run's escrow account is missing")
    else:
        balance = int(escrow["credits_posted"][0]) - int(escrow["debits_posted"][0])
        if balance != int(remaining.sum()):
            problems.append(f"the escrow holds {balance:,}, the run's packets' remaining add up to "
                            f"{int(remaining.sum()):,}")
    return problems


def _transfers_agree(transfers: np.ndarray, records: np.ndarray, escrow: np.ndarray) -> bool:
    """Each claim's transfer moves its share from the escrow to its claimer, coded a claim."""
    by_id = _sorted_by(_keys(transfers), transfers["amount"], transfers["credit_account_id_lo"],
                       transfers["debit_account_id_lo"], transfers["code"])
    expected = _sorted_by(_keys(records, "transfer_id"), records["amount"], records["claimer_id_lo"])
    return (np.array_equal(by_id[0], expected[0]) and np.array_equal(by_id[1], expected[1])
            and bool((by_id[2] == escrow["id_lo"][0]).all())
            and bool((by_id[3] == core.TransferCode.red_envelope_claim).all()))


def figures(data: TraceData, side: dict) -> dict:
    """What the run's red envelopes came to (minor units, exact): packets by state, claims, the escrow."""
    packets, escrow = side["packets"], side["escrow"]
    state = packets["state"]
    claimed = _claimed(data)
    return {
        "packets": len(packets),
        "sent_minor": int(packets["total"].astype(object).sum()),
        "open": int((state == core.EnvelopeState.OPEN).sum()),
        "emptied": int((state == core.EnvelopeState.EMPTY).sum()),
        "refunded": int((state == core.EnvelopeState.REFUNDED).sum()),
        "refund_failed": int((state == core.EnvelopeState.REFUND_FAILED).sum()),
        "refunded_minor": int(packets["refunded"].astype(object).sum()),
        "claims": int(claimed.sum()),
        "claimed_minor": int(data.claimed_amount[claimed].astype(object).sum()),
        "late_claims": int(((data.operation == Operation.claim_envelopes)
                            & (data.result == core.Result.envelope_empty)).sum()),
        "escrow_minor": (int(escrow["credits_posted"][0]) - int(escrow["debits_posted"][0])) if len(escrow) else 0,
    }


def summary(numbers: dict, problems: list[str]) -> str:
    """A few lines for a person: the packets' ends, the claims, the escrow, and whether all agreed."""
    n = numbers
    lines = [f"red envelopes (read back from the server): {n['packets']:,} packets sent ({n['sent_minor']:,} minor "
             f"units), {n['emptied']:,} emptied, {n['open']:,} open, {n['refunded']:,} refunded at expiry",
             f"  {n['claims']:,} claims got a share ({n['claimed_minor']:,} minor units), {n['late_claims']:,} came "
             f"late (envelope_empty); the escrow holds {n['escrow_minor']:,}"]
    if problems:
        lines += ["  DISAGREES with the run's answers:"] + [f"    {problem}" for problem in problems]
    else:
        lines.append("  every packet, claim, share and claim transfer agrees with the run's answers; emptied "
                     "packets' shares sum to their totals; the escrow holds the open packets' remaining")
    return "\n".join(lines)
