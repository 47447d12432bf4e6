"""``herd lab``, the parts that need no namespace: names and the prefix,
topologies, the config, the nft scripts of each fault, the load's
bookkeeping, and options refused before anything is built. The lab itself
runs in tests/herd/test_lab.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO

from config.loader import load_config
from herd.tools.chaos import time_ns_of, time_text
from herd.tools.lab import plan, rules
from herd.tools.lab.hosts import parse_metrics
from herd.tools.lab.load import Ledger, Update
from herd.tools.lab.scale import percentile

# -- names and addresses --------------------------------------------------------


def test_every_name_the_lab_gives_the_kernel_has_the_prefix() -> None:
    host = plan.Host(25)
    names = [plan.NET_NS, plan.OPS_NS, plan.BRIDGE, host.netns, host.veth, host.bridge_port]
    assert all(n.startswith(plan.PREFIX) for n in names)
    assert all(len(n) <= 15 for n in [plan.BRIDGE, host.veth, host.bridge_port, plan.PREFIX + "vops"])
    assert (host.name, host.address) == ("h25", "10.77.0.25")


def test_host_counts_out_of_range_are_refused() -> None:
    with pytest.raises(plan.LabError, match="--hosts"):
        plan.hosts(0)
    with pytest.raises(plan.LabError, match="--hosts"):
        plan.hosts(plan.MAX_HOSTS + 1)


# -- topologies -----------------------------------------------------------------


def connected(count: int, edges: list[plan.Edge]) -> bool:
    return count <= 1 or len(plan.distances(edges, 1)) == count


@pytest.mark.parametrize("count", [3, 5, 10, 25, 60])
def test_random_topologies_are_connected_seeded_and_of_degree_about_three(count: int) -> None:
    for seed in range(10):
        edges = plan.random_topology(count, 3, seed)
        assert edges == plan.random_topology(count, 3, seed)
        assert connected(count, edges)
        assert len(set(edges)) == len(edges) and all(a < b for a, b in edges)
        degrees = [len(p) for p in plan.neighbours(edges).values()]
        assert len(degrees) == count
        if count > 4:
            assert len(edges) == round(count * 3 / 2)
            assert min(degrees) >= 2 and max(degrees) <= 5
    if count > 3:  # (three hosts make one triangle whatever the seed)
        assert len({tuple(plan.random_topology(count, 3, seed)) for seed in range(10)}) > 1


def test_a_small_herd_is_fully_linked_and_a_line_is_a_line() -> None:
    assert plan.random_topology(3, 3, 1) == [(1, 2), (1, 3), (2, 3)]
    line = plan.line_topology(10)
    assert line == [(i, i + 1) for i in range(1, 10)]
    assert plan.diameter_ends(10, line) == (1, 10, 9)
    assert plan.distances(line, 4) == {4: 0, 3: 1, 5: 1, 2: 2, 6: 2, 1: 3, 7: 3, 8: 4, 9: 5, 10: 6}
    assert not connected(4, [(1, 2), (3, 4)])
    assert plan.describe_edges([(1, 2), (2, 5)]) == "h1-h2 h2-h5"


# -- the config -------------------------------------------------------------------


def test_one_config_for_every_host_in_the_documented_multi_host_layout(tmp_path: Path) -> None:
    edges = plan.random_topology(5, 3, 7)
    path = tmp_path / "herd.toml"
    path.write_text(plan.render_config(plan.hosts(5), edges))
    config = load_config(str(path))
    links = plan.neighbours(edges)
    for i in range(1, 6):
        node = config.nodes[f"h{i}"]
        assert (node.host, node.port, node.peer_port, node.admin) == \
            (f"10.77.0.{i}", 10000, 20000, (f"10.77.0.{i}", 30000))
        redis = node.redis
        assert (redis.host, redis.port, redis.db, node.prefix) == ("127.0.0.1", 6400, 0, "herd:")
        assert sorted(config.neighbours(f"h{i}")) == sorted(f"h{p}" for p in links[i])
    assert "peer_port" not in path.read_text() and "admin" not in path.read_text()  # the defaults


# -- nftables scripts -----------------------------------------------------------------


def test_a_partition_drops_both_ways_on_both_sides() -> None:
    h1, h2, h3 = plan.hosts(3)
    fault = rules.partition([h1], [h2, h3])
    assert fault == {h1: [rules.Drop(("10.77.0.2", "10.77.0.3"))], h2: [rules.Drop(("10.77.0.1",))],
                     h3: [rules.Drop(("10.77.0.1",))]}
    script = rules.scripts(fault)[h1]
    assert script.startswith("table inet herdlab_fault {}\ndelete table inet herdlab_fault\n")
    assert "type filter hook input priority 0; policy accept;" in script
    assert "    ip saddr { 10.77.0.2, 10.77.0.3 } drop\n" in script


def test_a_one_way_cut_drops_only_at_the_receivers() -> None:
    h1, h2, h3 = plan.hosts(3)
    assert rules.one_way([h1], [h2, h3]) == {h2: [rules.Drop(("10.77.0.1",))],
                                             h3: [rules.Drop(("10.77.0.1",))]}


def test_loss_drops_a_share_of_a_link_each_way() -> None:
    h1, h2 = plan.hosts(2)
    fault = rules.loss(h1, h2, 20)
    assert fault[h1][0].rule() == "ip saddr { 10.77.0.2 } numgen random mod 100 < 20 drop"
    assert fault[h2][0].rule() == "ip saddr { 10.77.0.1 } numgen random mod 100 < 20 drop"
    with pytest.raises(ValueError):
        rules.loss(h1, h2, 0)


def test_heal_and_meter_scripts() -> None:
    assert rules.fault_script([]) == rules.heal_script()
    meter = rules.meter_script()
    assert 'tcp dport 20000 counter name "peer_tx"' in meter
    assert 'tcp sport 20000 counter name "peer_tx"' in meter
    assert "hook output priority 10" in meter


# -- the load's bookkeeping ---------------------------------------------------------------


def test_client_times_round_trip_exactly() -> None:
    assert time_text(1_621_464_827_959_498_503) == "1621464827.959498503"
    assert time_ns_of(b"1621464827.959498503") == 1_621_464_827_959_498_503
    assert time_ns_of(b"12.5") == 12_500_000_000 and time_ns_of(b"12") == 12_000_000_000
    assert time_ns_of(b"-1") is None and time_ns_of(b"1.0000000001") is None


def test_the_ledger_keeps_the_newest_acknowledged_update() -> None:
    ledger = Ledger()
    first, second = ledger.next_time(), ledger.next_time()
    assert second > first
    old = Update("c1", first, "+1.000000+002.000000", "h1")
    new = Update("c1", second, "+3.000000+004.000000", "h2")
    ledger.judge(new, f"AT h2 +0.001000000 c1 +3.000000+004.000000 {time_text(second)}\n".encode())
    ledger.judge(old, f"AT h1 +0.001000000 c1 +1.000000+002.000000 {time_text(first)}\n".encode())
    assert ledger.acked["c1"] is new
    refused = Update("c2", ledger.next_time(), "+0.000000+000.000000", "h1")
    ledger.judge(refused, b"? IAMAT c2 ...\n")
    wrong = Update("c3", ledger.next_time(), "+0.000000+000.000000", "h1")
    ledger.judge(wrong, b"AT h3 +0.1 c3 +0.000000+000.000000 1.0\n")
    assert (ledger.counts["acked"], ledger.counts["refused"], ledger.counts["bad-reply"]) == (2, 1, 1)
    assert set(ledger.acked) == {"c1"}


def test_metrics_and_percentiles() -> None:
    text = '# HELP x\nherd_flood_messages_total{direction="out"} 12.0\nherd_reconciliation_bytes_total 3.0\n'
    assert parse_metrics(text) == {'herd_flood_messages_total{direction="out"}': 12.0,
                                   "herd_reconciliation_bytes_total": 3.0}
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
    assert percentile([7.0], 0.99) == 7.0


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["chaos", "--faults", "partition,bogus"], "--faults: unknown kind(s) bogus; known: partition, one_way"),
    (["--rate", "0"], "--rate must be more than 0"),
    (["--hosts", "1"], "--hosts must be at least 2"),
    (["chaos", "--rounds", "0"], "--rounds must be at least 1"),
    (["scale", "--sizes", "5,x"], "--sizes: '5,x' is not a list of numbers"),
    (["scale", "--sizes", "5,300"], "--sizes: each size must be within 2..200"),
])
def test_bad_options_are_one_line_before_anything_is_built(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "herd", "lab", *args], cwd=REPO, capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"herd lab: {message}") and result.stderr.count("\n") == 1
