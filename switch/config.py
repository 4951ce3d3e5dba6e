"""Switch configuration: a TOML file (stdlib ``tomllib``) plus ``--set section.key=value`` overrides.

Everything is validated once at start-up into frozen dataclasses; a bad value stops the switch with a
message naming the table and key, e.g.
``config error: [issuers.cup] port: expected an integer 1-65535, got "x"``.  Unknown keys are errors
too (a typo must not silently fall back to a default).  ``docs/configuration.md`` lists every key;
``docs/example-config.toml`` is a complete, working example.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAC_ALGORITHMS = ("pos-ecb", "x9.19", "x9.9")
KEY_MODES = ("001", "003", "004")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_HEX = re.compile(r"^[0-9A-Fa-f]+$")
_KEY_UNDER_LMK = re.compile(r"^[UTXYZ]?[0-9A-Fa-f]{16,48}$")
_DIGITS = re.compile(r"^[0-9]+$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ConfigError(Exception):
    """Invalid configuration; ``str()`` is the operator-facing message."""

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.where, self.key, self.problem = where, key, problem
        prefix = f"[{where}] " if where else ""
        super().__init__(f"config error: {prefix}{key}: {problem}")


# -- dataclasses ------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 5000
    max_frame: int = 4096  # largest LEN value accepted from a terminal
    max_in_flight: int = 8  # concurrent requests per connection
    idle_timeout: float = 300.0  # seconds without a frame before the connection is closed
    max_total_in_flight: int = 0  # switch-wide bound on requests at the HSM/issuers (0 = unlimited); beyond: 96
    frame_timeout: float = 30.0  # a started frame must complete within this (slowloris defence)
    max_connections: int = 0  # open terminal connections (0 = unlimited)


@dataclass(frozen=True, slots=True)
class HsmConfig:
    host: str = "127.0.0.1"
    port: int = 1500
    header_len: int = 4
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    name: str
    host: str = "127.0.0.1"
    port: int = 0
    timeout: float = 10.0
    zpk_under_lmk: str = ""
    echo_interval: float = 60.0
    kind: str = "card"  # "card" issuer or "wallet" (QR)


@dataclass(frozen=True, slots=True)
class RoutesConfig:
    bins: tuple[tuple[str, str], ...] = ()  # (BIN prefix, issuer), longest prefix first
    qr: tuple[tuple[str, str], ...] = ()  # (payment-code prefix, wallet), longest prefix first
    default: str | None = None  # issuer for PANs no prefix matches (None: decline 15)

    def issuer_for_pan(self, pan: str) -> str | None:
        """Longest matching BIN prefix wins; else the default issuer."""
        for prefix, issuer in self.bins:
            if pan.startswith(prefix):
                return issuer
        return self.default

    def wallet_for_code(self, code: str) -> str | None:
        for prefix, wallet in self.qr:
            if code.startswith(prefix):
                return wallet
        return None


@dataclass(frozen=True, slots=True)
class JournalConfig:
    backend: str = "sqlite"
    path: str = "posswitch.db"
    dsn: str = ""
    group_commit_ms: float = 1.0
    synchronous: str = "FULL"
    pan_hash_key: bytes = b""
    #: sys.setswitchinterval for the process: how long the event loop may keep the GIL while the journal
    #: writer thread waits for it (CPython's default is 5 ms)
    gil_switch_interval_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9108


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    json: bool = False


@dataclass(frozen=True, slots=True)
class MacProfile:
    name: str
    algorithm: str = "pos-ecb"


@dataclass(frozen=True, slots=True)
class FeeRate:
    """Fee = fixed + amount × rate / 10 000 (rounded half up), capped at ``cap`` when ``cap`` > 0 (fen)."""

    rate: float = 0.0  # per 10 000 (38 = 0.38 %)
    fixed: int = 0
    cap: int = 0


@dataclass(frozen=True, slots=True)
class FeeProfile:
    name: str
    debit: FeeRate = FeeRate(38, 0, 2000)
    credit: FeeRate = FeeRate(60, 0, 0)
    qr: FeeRate = FeeRate(38, 0, 0)
    other: FeeRate = FeeRate(60, 0, 0)  # card type unknown
    refund_fee_returned: bool = False


@dataclass(frozen=True, slots=True)
class SettlementConfig:
    utc_offset_hours: float = 8.0  # business day of the daily report (China Standard Time)


@dataclass(frozen=True, slots=True)
class MerchantConfig:
    merchant_id: str
    name: str = ""
    fee_profile: str = "default"


@dataclass(frozen=True, slots=True)
class TerminalConfig:
    terminal_id: str
    merchant_id: str
    tmk_under_lmk: str
    mac_profile: str = "default"
    mac_algorithm: str = "pos-ecb"  # resolved from mac_profile
    key_mode: str = "003"


@dataclass(frozen=True, slots=True)
class Config:
    acquirer_id: str = "00000000"
    listener: ListenerConfig = ListenerConfig()
    hsm: HsmConfig = HsmConfig()
    issuers: Mapping[str, IssuerConfig] = field(default_factory=dict)
    routes: RoutesConfig = RoutesConfig()
    journal: JournalConfig = JournalConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    mac_profiles: Mapping[str, MacProfile] = field(default_factory=dict)
    fees: Mapping[str, FeeProfile] = field(default_factory=dict)
    settlement: SettlementConfig = SettlementConfig()
    merchants: tuple[MerchantConfig, ...] = ()
    terminals: tuple[TerminalConfig, ...] = ()
    source: str = ""


# -- typed getters that name the key ---------------------------------------------------------------------

class _Table:
    """One TOML table being consumed; leftover keys are reported as unknown."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError("", where, f"expected a table, got {_show(data)}")
        self.data, self.where, self.used = data, where, set()

    def _raw(self, key: str) -> Any:
        self.used.add(key)
        return self.data.get(key)

    def err(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.where, key, problem)

    def string(self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None,
               what: str = "a string", choices: Sequence[str] | None = None) -> str:
        v = self._raw(key)
        if v is None:
            if default is None:
                raise self.err(key, "required")
            return default
        if not isinstance(v, str) or (pattern is not None and not pattern.match(v)):
            raise self.err(key, f"expected {what}, got {_show(v)}")
        if choices is not None and v not in choices:
            raise self.err(key, f"expected one of {', '.join(choices)}, got {_show(v)}")
        return v

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int:
        v = self._raw(key)
        if v is None:
            if default is None:
                raise self.err(key, "required")
            return default
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.err(key, f"expected an integer {lo}-{hi}, got {_show(v)}")
        return v

    def number(self, key: str, default: float, lo: float, hi: float) -> float:
        v = self._raw(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise self.err(key, f"expected a number {lo:g}-{hi:g}, got {_show(v)}")
        return float(v)

    def boolean(self, key: str, default: bool) -> bool:
        v = self._raw(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.err(key, f"expected true or false, got {_show(v)}")
        return v

    def table(self, key: str) -> _Table:
        v = self._raw(key)
        where = f"{self.where}.{key}" if self.where else key
        return _Table({} if v is None else v, where)

    def array_of_tables(self, key: str) -> list[_Table]:
        v = self._raw(key)
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.err(key, f"expected an array of tables ([[{key}]]), got {_show(v)}")
        return [_Table(item, f"{key}[{i}]") for i, item in enumerate(v)]

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], "unknown key")


def _show(v: Any) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    return repr(v)


# -- sections --------------------------------------------------------------------------------------------

def _listener(t: _Table) -> ListenerConfig:
    c = ListenerConfig(
        host=t.string("host", "127.0.0.1"),
        port=t.integer("port", 5000, 0, 65535),
        max_frame=t.integer("max_frame", 4096, 64, 65535),
        max_in_flight=t.integer("max_in_flight", 8, 1, 10_000),
        idle_timeout=t.number("idle_timeout", 300.0, 0.1, 86_400),
        max_total_in_flight=t.integer("max_total_in_flight", 0, 0, 10_000_000),
        frame_timeout=t.number("frame_timeout", 30.0, 0.01, 3600),
        max_connections=t.integer("max_connections", 0, 0, 10_000_000),
    )
    t.done()
    return c


def _hsm(t: _Table) -> HsmConfig:
    c = HsmConfig(
        host=t.string("host", "127.0.0.1"),
        port=t.integer("port", 1500, 0, 65535),
        header_len=t.integer("header_len", 4, 0, 32),
        timeout=t.number("timeout", 2.0, 0.01, 600),
    )
    t.done()
    return c


def _issuer(name: str, t: _Table) -> IssuerConfig:
    if not _NAME.match(name):
        raise ConfigError("issuers", name, "issuer names use letters, digits, '_', '-', '.'")
    c = IssuerConfig(
        name=name,
        host=t.string("host", "127.0.0.1"),
        port=t.integer("port", None, 1, 65535),
        timeout=t.number("timeout", 10.0, 0.01, 600),
        zpk_under_lmk=t.string("zpk_under_lmk", "", re.compile(r"^$|" + _KEY_UNDER_LMK.pattern),
                               "a key under LMK (optional scheme letter + 16/32/48 hex)"),
        echo_interval=t.number("echo_interval", 60.0, 0, 86_400),
        kind=t.string("kind", "card", choices=("card", "wallet")),
    )
    t.done()
    return c


def _prefix_map(t: _Table, key: str, issuers: Mapping[str, IssuerConfig], kind: str) -> tuple[tuple[str, str], ...]:
    sub = t.table(key)
    pairs = []
    for prefix in list(sub.data):
        target = sub.string(prefix, what="an issuer name")
        if not _DIGITS.match(prefix) or len(prefix) > 19:
            raise sub.err(prefix, "prefix must be 1-19 digits")
        if target not in issuers:
            raise sub.err(prefix, f"unknown issuer {_show(target)} (define [issuers.{target}])")
        if issuers[target].kind != kind:
            raise sub.err(prefix, f"issuer {_show(target)} is a {issuers[target].kind}, expected a {kind}")
        pairs.append((prefix, target))
    sub.done()
    return tuple(sorted(pairs, key=lambda p: (-len(p[0]), p[0])))


def _routes(t: _Table, issuers: Mapping[str, IssuerConfig]) -> RoutesConfig:
    default = t.string("default", "") or None
    if default is not None and default not in issuers:
        raise t.err("default", f"unknown issuer {_show(default)}")
    c = RoutesConfig(bins=_prefix_map(t, "bins", issuers, "card"), qr=_prefix_map(t, "qr", issuers, "wallet"),
                     default=default)
    t.done()
    return c


def _journal(t: _Table) -> JournalConfig:
    backend = t.string("backend", "sqlite", choices=("sqlite", "postgresql"))
    path = t.string("path", "posswitch.db")
    dsn = t.string("dsn", "")
    if backend == "postgresql":
        raise t.err("backend", "postgresql is not implemented yet (the store interface is ready for it)")
    key_hex = t.string("pan_hash_key", None, _HEX, "hex (at least 32 digits)")
    if len(key_hex) < 32 or len(key_hex) % 2:
        raise t.err("pan_hash_key", f"expected an even number of hex digits, at least 32, got {len(key_hex)}")
    c = JournalConfig(
        backend=backend,
        path=path,  # relative paths are relative to the working directory
        dsn=dsn,
        group_commit_ms=t.number("group_commit_ms", 1.0, 0, 1000),
        synchronous=t.string("synchronous", "FULL", choices=("FULL", "NORMAL", "OFF")),
        pan_hash_key=bytes.fromhex(key_hex),
        gil_switch_interval_ms=t.number("gil_switch_interval_ms", 5.0, 0.05, 100),
    )
    t.done()
    return c


def _metrics(t: _Table) -> MetricsConfig:
    c = MetricsConfig(enabled=t.boolean("enabled", True), host=t.string("host", "127.0.0.1"),
                      port=t.integer("port", 9108, 0, 65535))
    t.done()
    return c


def _logging(t: _Table) -> LoggingConfig:
    level = t.string("level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise t.err("level", f"expected one of {', '.join(LOG_LEVELS)}, got {_show(level)}")
    c = LoggingConfig(level=level, json=t.boolean("json", False))
    t.done()
    return c


def _fee_rate(t: _Table, default: FeeRate) -> FeeRate:
    c = FeeRate(rate=t.number("rate", default.rate, 0, 10_000), fixed=t.integer("fixed", default.fixed, 0, 10**9),
                cap=t.integer("cap", default.cap, 0, 10**12))
    t.done()
    return c


def _fee_profile(name: str, t: _Table) -> FeeProfile:
    d = FeeProfile(name)
    parts = {}
    for kind in ("debit", "credit", "qr", "other"):
        sub = t.table(kind)
        parts[kind] = _fee_rate(sub, getattr(d, kind))
    c = FeeProfile(name=name, refund_fee_returned=t.boolean("refund_fee_returned", False), **parts)
    t.done()
    return c


def _load_registry(t: _Table, base: Path, seen_files: set[Path]) -> tuple[list[_Table], list[_Table]]:
    merchants = t.array_of_tables("merchants")
    terminals = t.array_of_tables("terminals")
    extra = t.string("terminals_file", "")
    if extra:
        p = (base / extra).resolve()
        if p in seen_files:
            raise t.err("terminals_file", f"{extra} includes itself")
        seen_files.add(p)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise t.err("terminals_file", f"cannot read {p}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(p), "syntax", str(exc)) from exc
        sub = _Table(data, "")
        m2, t2 = _load_registry(sub, p.parent, seen_files)
        sub.done()
        merchants += m2
        terminals += t2
    return merchants, terminals


def _registry(
    merchant_tables: Iterable[_Table], terminal_tables: Iterable[_Table], mac_profiles: Mapping[str, MacProfile],
    fees: Mapping[str, FeeProfile],
) -> tuple[tuple[MerchantConfig, ...], tuple[TerminalConfig, ...]]:
    merchants: dict[str, MerchantConfig] = {}
    for t in merchant_tables:
        mid = t.string("merchant_id", None, re.compile(r"^[\x20-\x7e]{15}$"), "15 characters (field 42)")
        m = MerchantConfig(merchant_id=mid, name=t.string("name", ""), fee_profile=t.string("fee_profile", "default"))
        if m.fee_profile not in fees:
            raise t.err("fee_profile", f"unknown fee profile {_show(m.fee_profile)}")
        if mid in merchants:
            raise t.err("merchant_id", f"duplicate merchant {_show(mid)}")
        t.done()
        merchants[mid] = m
    terminals: dict[tuple[str, str], TerminalConfig] = {}
    for t in terminal_tables:
        tid = t.string("terminal_id", None, re.compile(r"^[\x20-\x7e]{8}$"), "8 characters (field 41)")
        mid = t.string("merchant_id", None, re.compile(r"^[\x20-\x7e]{15}$"), "15 characters (field 42)")
        if mid not in merchants:
            raise t.err("merchant_id", f"unknown merchant {_show(mid)} (add a [[merchants]] entry)")
        profile = t.string("mac_profile", "default")
        if profile not in mac_profiles:
            raise t.err("mac_profile", f"unknown MAC profile {_show(profile)}")
        tc = TerminalConfig(
            terminal_id=tid, merchant_id=mid,
            tmk_under_lmk=t.string("tmk_under_lmk", None, _KEY_UNDER_LMK,
                                   "a key under LMK (optional scheme letter + 16/32/48 hex)"),
            mac_profile=profile, mac_algorithm=mac_profiles[profile].algorithm,
            key_mode=t.string("key_mode", "003", choices=KEY_MODES),
        )
        if (tid, mid) in terminals:
            raise t.err("terminal_id", f"duplicate terminal {_show(tid)} for merchant {_show(mid)}")
        t.done()
        terminals[(tid, mid)] = tc
    return tuple(merchants.values()), tuple(terminals.values())


def build_config(data: Mapping[str, Any], base: Path = Path("."), source: str = "") -> Config:
    """Validate a parsed TOML document (paths relative to ``base``)."""
    root = _Table(dict(data), "")
    acquirer_id = root.string("acquirer_id", "00000000", re.compile(r"^[0-9]{1,11}$"), "1-11 digits (field 32)")
    issuers_t = root.table("issuers")
    issuers = {name: _issuer(name, issuers_t.table(name)) for name in list(issuers_t.data)}
    issuers_t.done()
    mac_t = root.table("mac_profiles")
    mac_profiles = {"default": MacProfile("default", "pos-ecb")}
    for name in list(mac_t.data):
        sub = mac_t.table(name)
        mac_profiles[name] = MacProfile(name, sub.string("algorithm", "pos-ecb", choices=MAC_ALGORITHMS))
        sub.done()
    mac_t.done()
    fees_t = root.table("fees")
    fees = {"default": FeeProfile("default")}
    for name in list(fees_t.data):
        fees[name] = _fee_profile(name, fees_t.table(name))
    fees_t.done()
    settle_t = root.table("settlement")
    settlement = SettlementConfig(utc_offset_hours=settle_t.number("utc_offset_hours", 8.0, -12, 14))
    settle_t.done()
    merchant_tables, terminal_tables = _load_registry(root, base, set())
    merchants, terminals = _registry(merchant_tables, terminal_tables, mac_profiles, fees)
    cfg = Config(
        acquirer_id=acquirer_id,
        listener=_listener(root.table("listener")),
        hsm=_hsm(root.table("hsm")),
        issuers=issuers,
        routes=_routes(root.table("routes"), issuers),
        journal=_journal(root.table("journal")),
        metrics=_metrics(root.table("metrics")),
        logging=_logging(root.table("logging")),
        mac_profiles=mac_profiles,
        fees=fees,
        settlement=settlement,
        merchants=merchants,
        terminals=terminals,
        source=source,
    )
    root.done()
    return cfg


# -- overrides and loading -------------------------------------------------------------------------------

def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # bare words are strings: --set logging.level=debug


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as TOML, else taken as strings)."""
    for item in overrides:
        path, sep, text = item.partition("=")
        keys = [k.strip() for k in path.split(".")]
        if not sep or not all(keys):
            raise ConfigError("--set", item, "expected dotted.key=value")
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError("--set", path, f"{k} is not a table")
            node = nxt
        node[keys[-1]] = _parse_value(text.strip())
    return data


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> Config:
    """Read, override and validate.  ``path=None`` starts from an empty document (defaults only)."""
    data: dict[str, Any] = {}
    base = Path(".")
    source = ""
    if path is not None:
        p = Path(path)
        source, base = str(p), p.parent
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError("", str(p), f"cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("", str(p), f"TOML syntax error: {exc}") from exc
    apply_overrides(data, overrides)
    return build_config(data, base, source)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and repeatable ``--set dotted.key=value``."""
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML configuration file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set listener.port=9000 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
