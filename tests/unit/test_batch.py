"""storage.batch: the group forms of a store batch's parts are the one-record
forms put together (they only save a Python call per record)."""

from __future__ import annotations

from herd.wire.client import AtRecord, parse_at_line
from storage.batch import KINDS, digest_of, digest_part, group_blob, record_blob, xor


def records() -> list[AtRecord]:
    lines = [b"AT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
             b"AT Bona -1.000000000 c2 +10.5-020.25 17",
             b"AT Clark +0.000000001 \xc3\xa9t\xc3\xa9 -89.9+179.999 1621464827.5"]
    parsed = [parse_at_line(line) for line in lines]
    assert all(parsed)
    return parsed  # type: ignore[return-value]


def test_a_group_blob_is_its_records_blobs_in_order() -> None:
    kinds = [KINDS[0][1], KINDS[0][0], KINDS[1][1]]
    for source in (b"", b"Bona F"):
        assert group_blob(records(), kinds, source) == b"".join(
            [record_blob(record, kind, None, source) for record, kind in zip(records(), kinds, strict=True)])
    assert group_blob([], [], b"") == b""


def test_the_digest_of_lines_is_the_xor_of_their_parts() -> None:
    lines = [record.line for record in records()]
    assert digest_of(lines) == xor([digest_part(line) for line in lines]) != 0
    assert digest_of(lines[:1]) == digest_part(lines[0]) and digest_of([]) == 0
