"""The server's configuration file (TOML), validated with msgspec.

    # .tally/config.toml
    [server]
    data = ".tally/data"      # LMDB data directory
    host = "127.0.0.1"
    port = 7420
    # accounts_max = 2097152        accounts (may grow when the data directory is reopened)
    # transfers_hot_max = 2097152   recent transfers held in memory; older ones are in the cold tier
    # pending_max = 1048576         unresolved pending transfers held in memory
    # orders_max = 262144           merchant orders held in memory (docs/products.md)
    # refunds_max = 65536           refunds held in memory
    # codes_max = 131072            payment codes held in memory (live ones: at most this less 8,190)
    # envelopes_max = 131072        red envelopes held in memory (open ones: at most this less 8,190)
    # claims_max = 262144           red envelope claims held in memory
    # stocks_max = 65536            coupon stocks held in memory (active ones: at most this less 8,190)
    # coupons_max = 262144          coupons held in memory
    # holdings_max = 262144         users' counts of a stock's coupons held in memory
    # members_max = 262144          members of merchants' membership cards held in memory
    # coupon_payments_max = 262144  coupon payments held in memory
    # fx_payments_max = 131072      cross-border payments held in memory
    # fx_refunds_max = 65536        their refunds held in memory
    # merchants_max = 131072        merchants with terms (fee rate, fee and settlement accounts)
    # tls_cert = "cert.pem", tls_key = "key.pem"          (optional: serve TLS only)
    # prefault = false                                     (true: touch all memory at start)
    # metrics_port = 9420      latency histograms in the Prometheus text format at
    #                          http://metrics_host:metrics_port/metrics (0, the default: off)

    [[clients]]               # one table per client service
    id = 1
    secret = "hex of at least 16 random bytes"
    # role = "admin"          admin (every operation; the default), wallet, or merchant with
    # merchants = [7, 8]      the merchant accounts it acts for (engine/roles.py)

``load`` reads and checks a file; ``create_default`` writes one with a fresh random secret for
client 1, which is what ``tally serve`` does on first start when no file exists.
"""

from __future__ import annotations

import os
import secrets as random_secrets
import tomllib

import msgspec

from core import constants as core_constants

DEFAULT_CONFIG_PATH = os.path.join(".tally", "config.toml")
DEFAULT_DATA_DIR = os.path.join(".tally", "data")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7420
SECRET_BYTES_MIN = 16
_U32_MAX = (1 << 32) - 1


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True):
    data: str = DEFAULT_DATA_DIR
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    accounts_max: int = core_constants.ACCOUNTS_MAX_DEFAULT
    transfers_hot_max: int = core_constants.TRANSFERS_HOT_MAX_DEFAULT
    pending_max: int = core_constants.PENDING_MAX_DEFAULT
    orders_max: int = core_constants.ORDERS_MAX_DEFAULT
    refunds_max: int = core_constants.REFUNDS_MAX_DEFAULT
    codes_max: int = core_constants.CODES_MAX_DEFAULT
    envelopes_max: int = core_constants.ENVELOPES_MAX_DEFAULT
    claims_max: int = core_constants.CLAIMS_MAX_DEFAULT
    stocks_max: int = core_constants.STOCKS_MAX_DEFAULT
    coupons_max: int = core_constants.COUPONS_MAX_DEFAULT
    holdings_max: int = core_constants.HOLDINGS_MAX_DEFAULT
    members_max: int = core_constants.MEMBERS_MAX_DEFAULT
    coupon_payments_max: int = core_constants.COUPON_PAYMENTS_MAX_DEFAULT
    fx_payments_max: int = core_constants.FX_PAYMENTS_MAX_DEFAULT
    fx_refunds_max: int = core_constants.FX_REFUNDS_MAX_DEFAULT
    merchants_max: int = core_constants.MERCHANTS_MAX_DEFAULT
    tls_cert: str | None = None
    tls_key: str | None = None
    prefault: bool = False    # touch all ledger memory at start: slower start, no page faults later
    checkpoint_interval_events: int = core_constants.CHECKPOINT_INTERVAL_EVENTS_DEFAULT
    state_hash_on_exit: bool = False   # print the ledger's state hash after a graceful stop (tally replay-log compares)
    metrics_port: int = 0              # serve /metrics (engine/metrics.py) on this port; 0: off
    metrics_host: str = DEFAULT_HOST


class ClientCredentials(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    secret: str  # hex
    role: str = "admin"                # engine/roles.py: admin, wallet or merchant
    merchants: list[int] = []          # a merchant gateway's merchant accounts

    @property
    def secret_bytes(self) -> bytes:
        return bytes.fromhex(self.secret)


class Config(msgspec.Struct, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    clients: list[ClientCredentials] = []

    def secrets(self) -> dict[int, bytes]:
        """Client id -> secret, as the server checks frames with them."""
        return {client.id: client.secret_bytes for client in self.clients}

    def roles(self) -> dict:
        """Client id -> its ``engine.roles.Role``."""
        from engine.roles import Role
        return {client.id: Role.of(client.role, client.merchants) for client in self.clients}


class ConfigError(Exception):
    """The configuration file is missing, malformed or inconsistent."""


def load(path: str) -> Config:
    """Read and check a configuration file; relative paths in it are relative to the working directory."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
        config = msgspec.convert(raw, Config)
    except (OSError, tomllib.TOMLDecodeError, msgspec.ValidationError) as error:
        raise ConfigError(f"{path}: {error}") from error
    problem = check(config)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return config


def check(config: Config) -> str | None:
    """What is wrong with a configuration, or None."""
    if not config.clients:
        return "no [[clients]]: nobody could connect"
    ids = [client.id for client in config.clients]
    if len(set(ids)) != len(ids):
        return "client ids must be unique"
    for client in config.clients:
        if not 1 <= client.id <= _U32_MAX:
            return f"client id {client.id} must be in 1..{_U32_MAX} (0 is reserved)"
        try:
            secret = client.secret_bytes
        except ValueError:
            return f"the secret of client {client.id} is not hex"
        if len(secret) < SECRET_BYTES_MIN:
            return f"the secret of client {client.id} is shorter than {SECRET_BYTES_MIN} bytes"
        if client.role not in ("admin", "wallet", "merchant"):
            return f"the role of client {client.id} must be admin, wallet or merchant, not {client.role!r}"
        if (client.role == "merchant") != bool(client.merchants):
            return f"client {client.id}: merchants = [...] go with role = \"merchant\", and it needs some"
        if not all(0 < merchant < 1 << 128 for merchant in client.merchants):
            return f"client {client.id}: merchant account ids are in 1..2**128 - 1"
    if not 0 <= config.server.port <= 65535:
        return "port must be in 0..65535"
    if not 0 <= config.server.metrics_port <= 65535:
        return "metrics_port must be in 0..65535 (0: no metrics endpoint)"
    if (config.server.tls_cert is None) != (config.server.tls_key is None):
        return "tls_cert and tls_key go together"
    return None


def create_default(path: str, *, data: str = DEFAULT_DATA_DIR, port: int = DEFAULT_PORT) -> Config:
    """Write a configuration with one client (id 1) and a fresh random secret; returns it."""
    config = Config(server=ServerSettings(data=data, port=port),
                    clients=[ClientCredentials(id=1, secret=random_secrets.token_hex(32))])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = (
        "# Tally server configuration (engine/config.py documents every key).\n"
        "[server]\n"
        f"data = {_toml_string(config.server.data)}\n"
        f"host = {_toml_string(config.server.host)}\n"
        f"port = {config.server.port}\n"
        "\n"
        "[[clients]]\n"
        "id = 1\n"
        f"secret = \"{config.clients[0].secret}\"\n"
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds a secret
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    return config


def load_or_create(path: str) -> Config:
    """``load``, creating the default file first if there is none.

    The file gets the defaults, never a first run's --data/--port: those are overrides of one
    run, and a later plain ``tally serve`` must use .tally/data and 7420, as documented.
    """
    if not os.path.exists(path):
        create_default(path)
    return load(path)


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
