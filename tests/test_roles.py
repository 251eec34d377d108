"""Who may do what (engine/roles.py, docs/protocol.md "Roles"): a client tries every operation
outside its role and is refused whole (frame status ``forbidden``) with nothing changed; a
merchant gateway's events naming another merchant are answered ``forbidden``, logged and
replayed as such; its lookups show its own merchants' records only; the config is checked."""

import asyncio
import contextlib

import numpy as np
import pytest

import core
from core import Result, replay_log
from core.operations import OPERATIONS, Kind, Operation
from core.order_keys import order_closes, order_creates, order_id, order_pays, refunds, token_of
from engine import config as config_module, frame
from engine.client import Client, ServerError
from engine.roles import Role
from engine.server import Server

SECRETS = {1: b"admin-service-secret", 2: b"wallet-service-secret", 3: b"merchant-gateway-secret"}
ROLES = {1: Role.of("admin"), 2: Role.of("wallet"), 3: Role.of("merchant", merchants=[7])}
CNY = 156
ACCOUNTS = [{"id": 1, "ledger": CNY, "code": 3}, {"id": 2, "ledger": CNY, "code": 1},
            {"id": 7, "ledger": CNY, "code": 2}, {"id": 8, "ledger": CNY, "code": 2},
            {"id": 20, "ledger": CNY, "code": 6}]


@contextlib.asynccontextmanager
async def serving(path):
    store = core.open(str(path), accounts_max=64, transfers_hot_max=1 << 14)
    server = Server(store, SECRETS, ROLES)
    try:
        port = await server.start("127.0.0.1", 0)
        clients = [await Client.connect("127.0.0.1", port, client_id=i, secret=SECRETS[i]) for i in (1, 2, 3)]
        try:
            yield store, clients
        finally:
            for client in clients:
                client.close()
    finally:
        await server.close()
        store.close()


def one_request_of(operation):
    """A well-formed request body of each operation (what it holds does not matter: it is refused)."""
    spec = OPERATIONS[operation]
    if spec.kind is Kind.create:
        return np.zeros(1, dtype=spec.event_dtype).tobytes(), 1
    if spec.kind is Kind.lookup:
        return np.zeros(1, dtype=core.ID_DTYPE).tobytes(), 0
    return b"\x80", 0  # an empty msgpack map: a query's defaults


async def setup(admin):
    assert not (await admin.create_accounts(core.accounts_from_dicts(ACCOUNTS))).any()
    fund = core.transfers_from_dicts([{"id": 500, "debit_account_id": 1, "credit_account_id": 2, "amount": 10**9,
                                       "ledger": CNY, "code": 4}])
    assert not (await admin.create_transfers(fund)).any()
    terms = core.records_from_dicts([{"merchant_id": m, "fee_account_id": 20, "fee_bps": 60, "ledger": CNY}
                                     for m in (7, 8)], core.MERCHANT_DTYPE)
    assert not (await admin.set_merchants(terms)).any()


def test_every_operation_outside_a_role_is_refused_whole_and_changes_nothing(tmp_path):
    async def main():
        async with serving(tmp_path / "s") as (store, (admin, wallet, merchant)):
            await setup(admin)
            for client, role in ((wallet, ROLES[2]), (merchant, ROLES[3])):
                refused = [op for op in Operation if op != Operation.ping and not role.allows(op)]
                assert refused  # each role lacks some
                for operation in refused:
                    before = store.sequence, store.state_hash()
                    body, events = one_request_of(operation)
                    with pytest.raises(ServerError) as caught:
                        await client.request(operation, body, events)
                    assert caught.value.status == frame.Status.forbidden, operation
                    assert (store.sequence, store.state_hash()) == before, operation  # nothing logged
                await client.ping()  # the connection stays usable
    asyncio.run(main())


def test_a_merchant_gateway_acts_for_its_merchants_only(tmp_path):
    async def main():
        async with serving(tmp_path / "s") as (store, (admin, wallet, merchant)):
            await setup(admin)
            mine, theirs = order_id(7, b"A"), order_id(8, b"A")
            created = await merchant.create_orders(order_creates([
                {"merchant_id": 7, "out_trade_no": b"A", "amount": 100, "ledger": CNY},
                {"merchant_id": 8, "out_trade_no": b"A", "amount": 100, "ledger": CNY}]))
            assert [Result(r) for r in created["result"]] == [Result.ok, Result.forbidden]
            assert (await admin.lookup_orders([theirs])).shape[0] == 0  # not made
            # Merchant 8's order, made by the admin: the gateway can neither see, close nor refund it.
            assert (await admin.create_orders(order_creates(
                [{"merchant_id": 8, "out_trade_no": b"A", "amount": 100, "ledger": CNY}])))["result"][0] == 0
            pays = order_pays([{"order_id": oid, "payer_id": 2, "amount": 100, "ledger": CNY,
                                "token": token_of(store.secret, oid)} for oid in (mine, theirs)])
            assert not (await wallet.pay_orders(pays)).any()
            assert [r["merchant_id"] for r in core.to_dicts(await merchant.lookup_orders([mine, theirs]))] == [7]
            assert (await admin.lookup_orders([mine, theirs])).shape[0] == 2
            closes = await merchant.close_orders(order_closes([{"order_id": theirs, "merchant_id": 8}]))
            assert list(closes) == [Result.forbidden]
            back = await merchant.refund_orders(refunds([
                {"order_id": mine, "merchant_id": 7, "amount": 40, "out_refund_no": b"R", "ledger": CNY},
                {"order_id": theirs, "merchant_id": 8, "amount": 40, "out_refund_no": b"R", "ledger": CNY}]))
            assert [Result(r) for r in back] == [Result.ok, Result.forbidden]
            assert [r["refunded"] for r in core.to_dicts(await admin.lookup_orders([mine, theirs]))] == [40, 0]
            expected = store.state_hash()
        return expected
    expected = asyncio.run(main())
    # The refused events are in the log: a replay answers them the same and ends in the same state.
    result = replay_log.run(str(tmp_path / "s"), str(tmp_path / "copy"))
    assert result["equal"] and result["replayed_hash"] == expected


@pytest.mark.parametrize("client,problem", [
    ({"role": "cashier"}, "must be admin, wallet or merchant"),
    ({"role": "merchant"}, "go with role"),
    ({"merchants": [7]}, "go with role"),
    ({"role": "merchant", "merchants": [0]}, "merchant account ids"),
])
def test_the_config_checks_roles(client, problem):
    config = config_module.Config(clients=[config_module.ClientCredentials(id=1, secret="ab" * 16, **client)])
    assert problem in config_module.check(config)


def test_roles_from_the_config():
    config = config_module.Config(clients=[
        config_module.ClientCredentials(id=1, secret="ab" * 16),
        config_module.ClientCredentials(id=2, secret="cd" * 16, role="merchant", merchants=[7, 1 << 100])])
    assert config_module.check(config) is None
    roles = config.roles()
    assert roles[1].allows(Operation.set_merchants) and not roles[2].allows(Operation.set_merchants)
    orders = np.zeros(3, dtype=core.ORDER_CREATE_DTYPE)
    orders["merchant_id_lo"], orders["merchant_id_hi"] = [7, 0, 8], [0, 1 << 36, 0]
    assert list(roles[2].merchants_mask(Operation.create_orders, orders)) == [True, True, False]
