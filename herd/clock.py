"""The node's wall clock, in integer nanoseconds (client times are compared
exactly, never as floats). No Twisted here: the lab's tools name the
variable too."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation

from config.schema import ConfigError

# For labs and tests only (docs/LAB.md): a host whose wall clock is off. A
# network namespace cannot change CLOCK_REALTIME, so a lab shifts the node's
# own clock instead. Production nodes leave it unset.
CLOCK_OFFSET_ENV = "HERD_CLOCK_OFFSET_SECONDS"


def node_clock(environ: Mapping[str, str]) -> tuple[Callable[[], int], int]:
    """The node's wall clock in integer nanoseconds, and its offset: time.time_ns
    shifted by ``$HERD_CLOCK_OFFSET_SECONDS`` (a decimal number of seconds,
    read once; unset or empty: no shift). A value that is not a finite
    number raises ConfigError."""
    text = environ.get(CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return time.time_ns, 0
    try:
        offset = Decimal(text)
        offset_ns = int(offset * 1_000_000_000) if offset.is_finite() else None
    except InvalidOperation:
        offset_ns = None
    if offset_ns is None:
        raise ConfigError(f"${CLOCK_OFFSET_ENV}: {text!r} is not a number of seconds")
    if offset_ns == 0:
        return time.time_ns, 0
    return (lambda: time.time_ns() + offset_ns), offset_ns
