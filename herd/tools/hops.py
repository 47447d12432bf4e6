"""Where a propagation's time goes, read from the nodes' access logs (pure).

``herd bench`` sends IAMATs of clients ``<prefix><n>`` to the first node of
a path of linked nodes (A-B-C-D). Each node logs, with microsecond times,
the line it read (``recv``) and each ``F`` line it sent on (``sent``, to
``peer <name> ...``); the IAMAT's client time is the load tool's clock when
it sent it. So per update: the tool's send, each node's read, and each
node's send to the next one. The stages:

- ``send->A``: from the tool's send to A having read and handled the IAMAT
  (A logs a client's lines after handling them);
- ``A->B``: from A's write of the ``F`` line to B's read of it (a hand-over
  between two processes: mostly the receiver waking up);
- ``B``: from B's read to its write to the next node (B's whole work on it);
- ``send->D``: from the tool's send to the last node's read (the store at D
  follows it; the propagation figure ends once D's Redis has it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from herd.tools.bench_load import percentile

# "<time> <who> recv|sent F AT <server> <skew> <client> ..." or "... recv IAMAT <client> <loc> <time>"
_LINE = re.compile(r"^(\S+) (.+?) (recv|sent) (?:F AT \S+ \S+ |IAMAT )(\S+) \S+(?: (\S+))?")


def stage_times(logs: Mapping[str, str], path: Sequence[str], prefix: str) -> dict[str, list[float]]:
    """Per stage (module docstring), its duration in ms for each update of
    ``prefix`` that every node of ``path`` logged."""
    first, last = path[0], path[-1]
    read: dict[str, dict[str, float]] = {node: {} for node in path}
    sent: dict[str, dict[str, float]] = {node: {} for node in path}
    sent_by_tool: dict[str, float] = {}
    for node, text in logs.items():
        if node not in read:
            continue
        following = path[path.index(node) + 1] if node != last else None
        for line in text.splitlines():
            match = _LINE.match(line)
            if match is None or not match[4].startswith(prefix):
                continue
            when, who, client = datetime.fromisoformat(match[1]).timestamp(), match[2], match[4]
            if match[3] == "recv":
                read[node].setdefault(client, when)
                if node == first and match[5]:
                    sent_by_tool.setdefault(client, float(match[5]))
            elif following is not None and who.startswith(f"peer {following} "):
                sent[node].setdefault(client, when)
    clients = [c for c in sent_by_tool
               if all(c in read[n] for n in path) and all(c in sent[n] for n in path[:-1])]
    out: dict[str, list[float]] = {f"send->{first}": [read[first][c] - sent_by_tool[c] for c in clients]}
    for node, following in zip(path[:-1], path[1:], strict=True):
        if node != first:
            out[node] = [sent[node][c] - read[node][c] for c in clients]
        out[f"{node}->{following}"] = [read[following][c] - sent[node][c] for c in clients]
    out[f"send->{last}"] = [read[last][c] - sent_by_tool[c] for c in clients]
    return {stage: [s * 1000 for s in seconds] for stage, seconds in out.items()}


def stage_summary(logs: Mapping[str, str], path: Sequence[str], prefix: str) -> dict[str, dict[str, float]]:
    """:func:`stage_times` as p50 and p99 (ms) per stage, in path order."""
    return {stage: {"p50_ms": round(percentile(ms, 0.50), 3), "p99_ms": round(percentile(ms, 0.99), 3)}
            for stage, ms in stage_times(logs, path, prefix).items()}
