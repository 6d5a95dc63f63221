"""Placements: where a federated value lives (`CLIENTS` or `SERVER`)."""

from __future__ import annotations

import attrs

__all__ = ["Placement", "CLIENTS", "SERVER", "placement_from_uri"]


@attrs.frozen
class Placement:
    """A named group of participants; `uri` is its stable serialized name."""

    uri: str
    default_all_equal: bool

    def __str__(self) -> str:
        return self.uri.upper()

    def __repr__(self) -> str:
        return f"fedsim.{self.uri.upper()}"


CLIENTS = Placement("clients", default_all_equal=False)
SERVER = Placement("server", default_all_equal=True)

_BY_URI = {p.uri: p for p in (CLIENTS, SERVER)}


def placement_from_uri(uri: str) -> Placement:
    try:
        return _BY_URI[uri]
    except KeyError:
        raise ValueError(f"unknown placement {uri!r}; expected one of {sorted(_BY_URI)}") from None
