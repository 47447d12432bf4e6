"""A store batch's argument and reply: records encoded as store_batch.lua
reads them (:func:`record_blob`), and its reply turned into each caller's
StoreResults (:func:`batch_stored`). No I/O."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from functools import reduce
from hashlib import sha1 as _sha1
from typing import Any, NamedTuple, TypeVar, overload

from twisted.internet.defer import Deferred

from herd.wire.client import AtRecord
from herd.wire.peer import LogStep, Position

_new = tuple.__new__  # makes NamedTuples without their __new__'s Python frame
_T = TypeVar("_T")


class StoreResult(NamedTuple):
    stored: bool  # the record was newer and is now held
    position: Position | None  # where it went in this node's log, when stored
    advanced: bool  # the log step's peer offset moved to step.pos
    previous: Position | None = None  # the log entry just before position


class OnDemand(Sequence[_T]):
    """A sequence of ``count`` items, each made when it is read (``_item``)."""

    __slots__ = ("_count",)

    def __init__(self, count: int):
        self._count = count

    def __len__(self) -> int:
        return self._count

    def _item(self, index: int) -> _T:  # 0 <= index < len
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        if isinstance(index, slice):
            return [self._item(i) for i in range(*index.indices(self._count))]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError(index)
        return self._item(index)


class StoredRun(OnDemand[StoreResult]):
    """The StoreResults of a group stored whole in one batch (the usual case),
    made on demand: record i is at ``<epoch>/0-<first + i>``, each right after
    the one before it, the first right after ``previous``. Most callers read
    only its ends (see Node._group_stored), not a result per record."""

    __slots__ = ("epoch", "first", "previous")

    def __init__(self, epoch: bytes, first: int, count: int, previous: Position):
        super().__init__(count)
        self.epoch, self.first, self.previous = epoch, first, previous

    def position(self, index: int) -> Position:
        """Where record ``index`` (0 <= index < len) went in the log."""
        return _new(Position, (self.epoch, b"0-%d" % (self.first + index)))

    def previous_of(self, index: int) -> Position:
        """The log entry right before record ``index``."""
        return self.position(index - 1) if index else self.previous

    def _item(self, index: int) -> StoreResult:
        return _new(StoreResult, (True, self.position(index), False, self.previous_of(index)))



# Records' part of the batch argument, their Deferred, their place in arrival
# order, how many records (0 for one record whose Deferred fires with its
# StoreResult; n >= 1 for a group whose Deferred fires with a sequence of n:
# a StoredRun when all were stored), and the XOR of the digest parts of those
# known newer (see digest_part).
Pending = tuple[bytes, Deferred[Any], int, int, int]


def digest_of(lines: list[bytes]) -> int:
    """The XOR of the digest parts of ``lines``, an AT line's part of the
    summary digest being the first 64 bits of its SHA-1; computed without a
    Python call per line (a store batch's, on the path of every update)."""
    from_bytes = int.from_bytes
    return reduce(operator.xor, [from_bytes(_sha1(line).digest()[:8]) for line in lines], 0)


def digest_part(line: bytes) -> int:
    """An AT line's part of the summary digest (see digest_of)."""
    return digest_of([line])


def xor(values: list[int]) -> int:
    return reduce(operator.xor, values, 0)


# store_batch.lua's record kind, by tie-break and known newer: whether the
# record's digest part is in the batch's (the node's XOR) or left to the script.
KINDS = ((b"2", b"0"), (b"3", b"1"))


_UNCHAINED = b"%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n\t"  # a record_blob without a log step


def group_blob(records: list[AtRecord], kinds: list[bytes], source: bytes) -> bytes:
    """The record_blob of each record (its kind, no log step, ``source``), one
    after the other, without a Python call per record (a store batch's, on
    the path of every update)."""
    return b"".join([_UNCHAINED % (record.server, record.skew, record.client_id, record.location.lat,
                                   record.location.lon, record.time.text, kind, source)
                     for record, kind in zip(records, kinds, strict=True)])


def record_blob(record: AtRecord, kind: bytes, step: LogStep | None, source: bytes) -> bytes:
    """One record's part of store_batch.lua's batch argument: the AT record's
    fields, its kind (KINDS) and source, each followed by a newline, then
    only with a log step its fields, each followed by a newline; the record
    ends with a tab (no field holds a newline or a tab; only a source,
    "<peer> F", a space)."""
    location = record.location
    if step is None:
        return _UNCHAINED % (record.server, record.skew, record.client_id, location.lat, location.lon,
                             record.time.text, kind, source)
    return b"%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n%s\n\t" % (
        record.server, record.skew, record.client_id, location.lat, location.lon, record.time.text,
        kind, source, step.peer, step.prev.epoch, step.prev.entry, step.pos.entry)


_NOT_STORED = StoreResult(False, None, False)
_NOT_STORED_ADVANCED = StoreResult(False, None, True)


def batch_stored(reply: bytes, part: list[Pending]) -> None:
    """Fire each record's (or group's) Deferred from store_batch.lua's reply: a
    line "<epoch> 0-<k>", the journal position before the batch (empty when
    nothing was stored), then per record "<advanced 0|1>", with "+" when
    stored: the stored ones are at 0-<k+1>, 0-<k+2>, ... in order, and a
    stored record's previous entry is the one stored before it in the batch
    (or the head before it)."""
    lines = reply.split(b"\n")
    epoch, _, previous_entry = lines[0].partition(b" ")
    k = int(previous_entry[2:]) if previous_entry else 0
    previous = _new(Position, (epoch, previous_entry))
    at = 1
    for _, done, _, count, _ in part:
        chunk = lines[at:at + (count or 1)]
        at += count or 1
        if count and chunk.count(b"0+") == count:  # a group stored whole: the usual case
            run = StoredRun(epoch, k + 1, count, previous)
            k += count
            previous = run.position(count - 1)
            done.callback(run)
            continue
        results = []
        for line in chunk:
            if len(line) > 1:
                k += 1
                position = _new(Position, (epoch, b"0-%d" % k))
                results.append(_new(StoreResult, (True, position, line[:1] == b"1", previous)))
                previous = position
            else:
                results.append(_NOT_STORED_ADVANCED if line == b"1" else _NOT_STORED)
        done.callback(results if count else results[0])
