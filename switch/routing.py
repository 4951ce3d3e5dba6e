"""BIN routing: which issuer link serves a card (longest matching PAN prefix wins).

A :class:`Router` holds named :class:`Route` objects (an issuer link plus the zone PIN key the
switch shares with that issuer, under the LMK), a BIN table mapping PAN prefixes to route names
and a QR table mapping payment-code prefixes to wallet routes.  ``lookup`` walks the prefix lengths present in the table from the longest down, so the
cost is a handful of dict probes whatever the table size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Route:
    name: str
    link: Any  # switch.issuer_link.IssuerLink
    zpk_under_lmk: str | None = None
    card_org: str = "CUP"  # 63.1 for cards of this route

    @property
    def up(self) -> bool:
        return bool(getattr(self.link, "is_up", True))


class Router:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self._bins: dict[str, str] = {}
        self._lengths: list[int] = []
        self.default: str | None = None  # route for PANs no prefix matches (None: decline 15)
        self._qr: dict[str, str] = {}
        self._qr_lengths: list[int] = []

    def add_route(self, route: Route) -> None:
        self.routes[route.name] = route

    def add_bin(self, prefix: str, route_name: str) -> None:
        if not prefix.isdigit() or not 1 <= len(prefix) <= 19:
            raise ValueError(f"BIN prefix {prefix!r} must be 1-19 digits")
        if route_name not in self.routes:
            raise ValueError(f"BIN {prefix}: unknown route {route_name!r}")
        self._bins[prefix] = route_name
        self._lengths = sorted({len(p) for p in self._bins}, reverse=True)

    def lookup(self, pan: str | None) -> Route | None:
        """The route of the longest BIN prefix matching ``pan``; else the default route, else None."""
        if not pan:
            return None
        bins = self._bins
        for n in self._lengths:
            name = bins.get(pan[:n])
            if name is not None:
                return self.routes[name]
        return self.routes.get(self.default) if self.default else None

    def add_qr_prefix(self, prefix: str, route_name: str) -> None:
        """QR payment-code prefix (merchant scans the customer's code) -> wallet route."""
        if not prefix.isdigit() or not 1 <= len(prefix) <= 32:
            raise ValueError(f"QR prefix {prefix!r} must be 1-32 digits")
        if route_name not in self.routes:
            raise ValueError(f"QR prefix {prefix}: unknown route {route_name!r}")
        self._qr[prefix] = route_name
        self._qr_lengths = sorted({len(p) for p in self._qr}, reverse=True)

    def lookup_qr(self, code: str | None) -> Route | None:
        """The wallet route of the longest QR prefix matching ``code``; None if none matches."""
        if not code:
            return None
        for n in self._qr_lengths:
            name = self._qr.get(code[:n])
            if name is not None:
                return self.routes[name]
        return None

    def __len__(self) -> int:
        return len(self._bins)
