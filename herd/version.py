"""herd's version, from one place: the installed package metadata
(pyproject.toml's ``version``). Bump it whenever the peer protocol
(herd.wire.peer.VERSION) or the storage schema changes."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def herd_version() -> str:
    """The installed herd's version; "unknown" when herd runs from a tree that
    was never installed (pip install -e . records it)."""
    try:
        return version("herd")
    except PackageNotFoundError:
        return "unknown"


VERSION = herd_version()
