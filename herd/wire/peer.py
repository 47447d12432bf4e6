"""Peer messages after the handshake: their kinds, fields, parsing and
formatting. Pure: bytes in, values out. The protocol is defined in
docs/PEER-PROTOCOL.md; this module is its code.

    F <AT line>                          a live update, forwarded before it was stored
    U <prev> <pos> <AT line>             a live update at <pos> of the sender's log, after <prev>
    K <prev> <pos>                       the sender's log moved from <prev> to <pos> with
                                         updates that came from the receiver or went
                                         between the two as F
    R <AT line>                          a record in answer to SYNC
    SYNC <pos>|- [ALL]                   "send me your log after <pos>" (- : from the start)
    SYNC-END <pos>|-                     the answer is complete up to <pos> (- : incomplete)
    PULL                                 "SYNC from me": my log may hold entries you missed
    HB                                   heartbeat: sent when nothing else was sent for a second
"""

from __future__ import annotations

import re
from typing import NamedTuple

FORWARD = b"F"
UPDATE = b"U"
LOG_MOVED = b"K"
RECORD = b"R"
SYNC = b"SYNC"
SYNC_END = b"SYNC-END"
PULL = b"PULL"
HEARTBEAT = b"HB"
ALL = b"ALL"  # SYNC flag: include the updates that came from the asking peer
NO_POSITION = b"-"

# Version of these messages, sent in the handshake (HERD-HELLO). 1: U/R/K/
# SYNC/PULL; 2: also F, K listing forwarded updates, SYNC ... ALL; 3: also HB;
# 4: K lists nothing (the receiver knows what it may lack, docs/PEER-PROTOCOL.md).
VERSION = b"4"

# A log entry id: "0-<k>" from the journal; herd 0.2.0 sent Redis stream ids.
_ENTRY_ID = re.compile(rb"[0-9]{1,20}-[0-9]{1,20}")
ANY_ENTRY = b"*"  # a log step's prev entry meaning "wherever the offset stands" (never on the wire)


class Position(NamedTuple):
    """A place in one node's update log: ``<epoch>/<entry id>`` on the wire."""

    epoch: bytes
    entry: bytes

    @property
    def token(self) -> bytes:
        return self.epoch + b"/" + self.entry

    @classmethod
    def parse(cls, token: bytes) -> Position | None:
        """A position from the wire: ``<epoch>/<digits>-<digits>``, else None;
        never ANY_ENTRY, which only the node itself uses."""
        epoch, slash, entry = token.partition(b"/")
        return cls(epoch, entry) if slash and epoch and _ENTRY_ID.fullmatch(entry) else None


class LogStep(NamedTuple):
    """One step of a peer's log: its update at ``pos`` followed ``prev``. The
    receiver's offset for ``peer`` advances along a step only from ``prev``."""

    peer: bytes
    prev: Position
    pos: Position


def token_of(position: Position | None) -> bytes:
    return position.token if position is not None else NO_POSITION


# -- formatting -------------------------------------------------------------

def forward(at_line: bytes) -> bytes:
    return FORWARD + b" " + at_line


def update(prev: Position | None, pos: Position, at_line: bytes) -> bytes:
    """``U``; ``prev`` None sends it unchained (``U - <pos>``)."""
    return b"U %s %s %s" % (token_of(prev), pos.token, at_line)


def log_moved(prev: Position, pos: Position) -> bytes:
    return b"K %s %s" % (prev.token, pos.token)


def record(at_line: bytes) -> bytes:
    return RECORD + b" " + at_line


def sync(since: Position | None, include_own: bool) -> bytes:
    return SYNC + b" " + token_of(since) + (b" " + ALL if include_own else b"")


def sync_end(end: Position | None) -> bytes:
    return SYNC_END + b" " + token_of(end)


# -- parsing ----------------------------------------------------------------

def split_kind(line: bytes) -> tuple[bytes, bytes]:
    """A message's kind and the rest of its line."""
    kind, _, rest = line.partition(b" ")
    return kind, rest


def parse_update(rest: bytes) -> tuple[bytes, bytes, bytes]:
    """``U``'s fields after the kind: prev and pos tokens (unparsed: ``-`` is
    legal for prev) and the AT line."""
    prev, _, rest = rest.partition(b" ")
    pos, _, at_line = rest.partition(b" ")
    return prev, pos, at_line


class LogMoved(NamedTuple):
    prev: Position
    pos: Position


def parse_log_moved(rest: bytes) -> LogMoved | None:
    """``K``'s fields after the kind, or None when malformed (not two
    positions, or positions of two epochs)."""
    fields = rest.split()
    if len(fields) != 2:
        return None
    prev, pos = Position.parse(fields[0]), Position.parse(fields[1])
    if prev is None or pos is None or prev.epoch != pos.epoch:
        return None
    return LogMoved(prev, pos)


def parse_sync(rest: bytes) -> tuple[Position | None, bool]:
    """``SYNC``'s position (None: from the start, or unreadable: a full
    transfer) and whether ALL was asked."""
    token, _, flag = rest.strip().partition(b" ")
    return Position.parse(token), flag.strip() == ALL
