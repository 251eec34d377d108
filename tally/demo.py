"""`tally demo`: the main job on a fresh clone, end to end, in about half a minute.

1. starts a `tally serve` process on a fresh LMDB data directory (``DIR/server``) on loopback;
2. sets up a population (wallets topped up from funding cards, Zipf-popular merchants with
   their fee terms) and runs a realistic open-loop mix (payments, P2P, holds captured or
   voided, refunds, merchants' QR orders paid or closed, and their refunds, wallets' payment
   codes charged by merchants, at once or held for the user's confirm, red envelopes sent
   and claimed) at a fixed rate with a short 3x burst: New Year's midnight, when the packets
   sent before it are claimed in a spike; recording the trace (``DIR/trace.tly``);
3. reads the merchant side back from the server (``loadgen.merchant_side``: orders by end,
   code charges' orders by end, refunds, fees taken and returned, the fee account, and every
   account of the run: debits equal credits, and the pending debits are the holds still open)
   and the red envelopes (``loadgen.envelope_side``: every packet, every claim and its share
   and transfer, emptied packets' shares summing to their totals, the escrow holding the open
   packets' remaining) and checks them against the run's answers;
4. writes the report (``DIR/report/report.html`` and ``report.json``) and prints the summary,
   the merchant side's, the red envelopes', and a table per product (QR orders, payment
   codes, refunds, red envelopes: requests, ok, other outcomes, refused, amounts);
5. stops the server gracefully (it prints the hash of its live state) and re-applies its log
   into a fresh store (``tally replay-log``): the hashes must be equal.

Everything stays under ``DIR`` (default ``.tally/demo``, marked as the demo's by a
``.tally-demo`` file); its server data and the replayed copy are started afresh on each run, so
runs do not add up. A directory that is not the demo's is refused, never emptied.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys

from core import replay_log
from loadgen import envelope_side, merchant_side, report as report_module, runner
from loadgen.workload import Codes, Envelopes, Mix, Population, Rate, Workload
from tally import local_server


def say(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


def workload(seconds: float, rate_per_s: float, users: int) -> Workload:
    return Workload(
        seconds=seconds,
        population=Population(users=users, merchants=max(1, users // 50)),
        mix=Mix(payment=59, p2p=10, hold=5, refund=5, qr_order=12, order_refund=3, payment_code=4, red_envelope=2),
        # A fifth of the charges held for the user; a second later most are confirmed, some
        # declined or revoked, and a tenth left to the engine's 45 s timeout (still held at the end).
        codes=Codes(step_up_ratio=0.2, confirm_ratio=0.6, decline_ratio=0.15, revoke_ratio=0.15,
                    confirm_after_s=min(1.0, seconds / 4)),
        # Packets of 10 shares in groups of 12 (two late claimers each); those sent before the
        # burst are claimed in it (the burst's extra requests: 2 x the rate for a second, more
        # than their claims), those sent after half a second after their send.
        envelopes=Envelopes(count=10, claimers=12, claim_after_s=min(0.5, seconds / 8), claims_at_burst=True),
        rate=Rate(shape="burst", per_s=rate_per_s, burst_at_s=seconds * 0.6, burst_factor=3.0, burst_s=1.0))


MARKER = ".tally-demo"


def _prepare(directory: str) -> str | None:
    """Make ``directory`` the demo's (or refuse); remove the last run's server data and copy."""
    if os.path.lexists(directory):
        if os.path.islink(directory) or not os.path.isdir(directory):
            return f"{directory} is not a directory"
        if os.listdir(directory) and not os.path.isfile(os.path.join(directory, MARKER)):
            return f"{directory} is not empty and not a tally demo directory (no {MARKER}): choose another --dir"
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, MARKER), "w") as file:
        file.write("made by tally demo: server/, replayed/, report/ and trace.tly are replaced on each run\n")
    for name in ("server", "replayed", "config.toml"):
        path = os.path.join(directory, name)
        if os.path.islink(path) or os.path.isfile(path):
            os.unlink(path)
        elif os.path.isdir(path):
            shutil.rmtree(path)
    return None


def run(directory: str, seconds: float = 10.0, rate_per_s: float = 20_000.0, users: int = 50_000) -> int:
    demo_workload = workload(seconds, rate_per_s, users)
    problem = demo_workload.check()
    if problem:
        print(f"tally demo: {problem}", file=sys.stderr)
        return 2
    problem = _prepare(directory)
    if problem:
        print(f"tally demo: {problem}", file=sys.stderr)
        return 2
    server_dir, replayed_dir = os.path.join(directory, "server"), os.path.join(directory, "replayed")
    secret = secrets.token_bytes(32)
    say(f"starting tally serve on a fresh data directory, {server_dir}")
    process, port = local_server.start(directory, secret=secret, accounts_max=2 * users + 1_000,
                                       state_hash_on_exit=True)
    trace_path = os.path.join(directory, "trace.tly")
    target = runner.Target("127.0.0.1", port, 1, secret)
    try:
        say(f"{users:,} wallets, {demo_workload.population.merchants:,} merchants; "
            f"{rate_per_s:,.0f} requests/s for {seconds:g} s (a 3x burst at {seconds * 0.6:g} s), open loop")
        report = runner.run(target, demo_workload,
                            runner.Options(connections=4, record=trace_path, progress=True, command="tally demo"))
        say("reading the merchants' orders, refunds and fees back from the server")
        merchant_figures, disagreements = merchant_side.audit(target, trace_path, demo_workload,
                                                              report["config"]["run_id"])
        say("reading the red envelopes back: packets, claims, their transfers, the escrow")
        envelope_figures, envelope_disagreements = envelope_side.audit(target, trace_path, demo_workload,
                                                                       report["config"]["run_id"])
    finally:
        server_exit, server_output = local_server.stop_and_read(process)
    live_hash = next((line.rsplit(" ", 1)[1] for line in server_output.splitlines()
                      if line.startswith("tally serve: state hash ")), None)
    json_path, html_path = report_module.write(report, os.path.join(directory, "report"))
    report["paths"] = {"json": json_path, "html": html_path}
    print(report_module.summary(report))
    print(merchant_side.summary(merchant_figures, disagreements))
    print(envelope_side.summary(envelope_figures, envelope_disagreements))
    print(products_table(report, merchant_figures, envelope_figures))
    fresh_dir = os.path.join(directory, "fresh")
    print(f"trace: {trace_path} (to replay it, against a fresh server: .venv/bin/tally serve --data {fresh_dir} "
          f"--port 7421, then .venv/bin/tally load replay {trace_path} --port 7421)")
    say("re-applying the server's log into a fresh store (tally replay-log)")
    replayed = replay_log.run(server_dir, replayed_dir)
    # The server's live state at its stop against the state its log rebuilds in a fresh store.
    equal = replayed["equal"] and replayed["replayed_hash"] == live_hash
    print(f"replay-log: {replayed['batches']:,} batches, {replayed['events']:,} events (setup included); "
          f"state hash of the live "
          f"server {(live_hash or 'missing')[:16]}…, of its log replayed {replayed['replayed_hash'][:16]}…: "
          f"{'equal' if equal else 'DIFFERENT'}")
    failed = report["requests"]["failed_to_send"]
    ok = server_exit == 0 and equal and failed == 0 and not disagreements and not envelope_disagreements
    if not ok:
        print(f"tally demo: server exit {server_exit}, {failed} requests without an answer, "
              f"state hashes {'equal' if equal else 'different'}, merchant side "
              f"{'disagrees' if disagreements else 'agrees'}, red envelopes "
              f"{'disagree' if envelope_disagreements else 'agree'}", file=sys.stderr)
    return 0 if ok else 1


#: The products of the demo's table: each one's request kinds (``loadgen.generator.Kind`` names).
PRODUCTS = (("QR orders", ("qr_create", "qr_pay", "qr_close")),
            ("payment codes", ("code_issue", "code_charge", "code_confirm", "code_decline", "code_revoke")),
            ("refunds", ("order_refund",)),
            ("red envelopes", ("envelope_send", "envelope_claim")))


def products_table(report: dict, merchant: dict, envelopes: dict) -> str:
    """A short table, a row per product: its requests, answered ok, other outcomes (a held code
    charge, a late claim), refused; and what the server holds of it (minor units, read back)."""
    amounts = {
        "QR orders": f"{merchant['paid']:,} paid, {merchant['paid_minor']:,}",
        "payment codes": f"{merchant['code_paid']:,} paid, {merchant['code_paid_minor']:,}",
        "refunds": f"{merchant['refunds']:,} made, {merchant['refunded_minor']:,}",
        "red envelopes": f"{envelopes['sent_minor']:,} sent, {envelopes['claimed_minor']:,} claimed, "
                         f"{envelopes['refunded_minor']:,} refunded, {envelopes['escrow_minor']:,} in escrow",
    }
    header = f"{'product':<15}{'requests':>10}{'ok':>10}{'outcomes':>10}{'refused':>9}  amounts (minor units)"
    lines = ["per product:", header, "-" * len(header)]
    for product, kinds in PRODUCTS:
        codes = [report["kinds"].get(kind, {}) for kind in kinds]
        requests = sum(sum(per.values()) for per in codes)
        ok = sum(per.get("ok", 0) for per in codes)
        outcomes = sum(n for per in codes for code, n in per.items() if code in report_module.OUTCOMES and code != "ok")
        lines.append(f"{product:<15}{requests:>10,}{ok:>10,}{outcomes:>10,}{requests - ok - outcomes:>9,}  "
                     f"{amounts[product]}")
    return "\n".join(lines)
