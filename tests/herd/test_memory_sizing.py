"""The per-client terms of the memory sizing rule (docs/OPERATIONS.md "Memory
sizing", ops/install.sh --clients) hold: storing clients with ids as long as
``kiwi.cs.ucla.edu-00001`` through a node grows its Redis's ``used_memory``
(what ``maxmemory`` limits) by at most 600 bytes per client and the node's
resident set by at most 250 bytes per client."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import REPO

from herd.tools.bench import memory_marks, run_tool
from herd.tools.harness import LocalHerd, silent_places

CLIENTS = 20_000
REDIS_BYTES_PER_CLIENT = 600
NODE_BYTES_PER_CLIENT = 250


@pytest.mark.timeout(180)
def test_clients_cost_no_more_memory_than_the_sizing_rule_allows(tmp_path: Path) -> None:
    with LocalHerd(tmp_path, {"A": []}, secret="s", places=silent_places("PLACES_KEY"),
                   env={"PLACES_KEY": "unused"}, appendfsync="everysec") as herd:
        herd.start()
        node = herd["A"]
        before = memory_marks(node)
        stored = run_tool("load", [str(node.port), "--connections", "4", "--in-flight", "64", "--count",
                                   str(CLIENTS), "--prefix", "kiwi.cs.ucla.edu-"], 150)
        after = memory_marks(node)
    assert stored["errors"] == 0 and stored["requests"] == CLIENTS
    redis_per_client = (after.used_memory - before.used_memory) / CLIENTS
    node_per_client = (after.node_rss - before.node_rss) / CLIENTS
    assert 300 < redis_per_client <= REDIS_BYTES_PER_CLIENT
    assert 0 < node_per_client <= NODE_BYTES_PER_CLIENT
    rule = (REPO / "ops/install.sh").read_text()  # the figures install.sh --clients uses
    assert f"CLIENTS * {REDIS_BYTES_PER_CLIENT}" in rule and f"CLIENTS * {NODE_BYTES_PER_CLIENT}" in rule
