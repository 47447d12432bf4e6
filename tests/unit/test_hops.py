"""herd.tools.hops: a propagation's stages from access log lines."""

from __future__ import annotations

from herd.tools.hops import stage_summary, stage_times

T = "2026-12-06T20:00:00."
LOGS = {
    # the tool sent p1 at .000100 (its client time); A handled it at .000400 and sent F to B at .000450
    "A": f"{T}000400+00:00 127.0.0.1:5000 recv IAMAT p1 +1.0+2.0 1796587200.000100\n"
         f"{T}000450+00:00 peer B (dialled) sent F AT A +0.000300000 p1 +1.0+2.0 1796587200.000100\n"
         f"{T}000460+00:00 127.0.0.1:5000 sent AT A +0.000300000 p1 +1.0+2.0 1796587200.000100\n"
         f"{T}000500+00:00 127.0.0.1:5000 recv IAMAT other1 +1.0+2.0 1796587200.000100\n",
    "B": f"{T}000650+00:00 peer A (accepted) recv F AT A +0.000300000 p1 +1.0+2.0 1796587200.000100\n"
         f"{T}000750+00:00 peer C (dialled) sent F AT A +0.000300000 p1 +1.0+2.0 1796587200.000100\n",
    "C": f"{T}001000+00:00 peer B (accepted) recv F AT A +0.000300000 p1 +1.0+2.0 1796587200.000100\n"
         f"{T}001200+00:00 peer B (accepted) recv F AT A +0.000300000 p2 +1.0+2.0 1796587200.000200\n",
}


def test_each_stage_of_each_update_every_node_logged() -> None:
    times = stage_times(LOGS, ["A", "B", "C"], "p")
    assert list(times) == ["send->A", "A->B", "B", "B->C", "send->C"]
    rounded = {stage: [round(ms, 3) for ms in values] for stage, values in times.items()}
    # p2 never reached A or B: left out; "other1" is not of the prefix
    assert rounded == {"send->A": [0.3], "A->B": [0.2], "B": [0.1], "B->C": [0.25], "send->C": [0.9]}


def test_summary_in_path_order() -> None:
    summary = stage_summary(LOGS, ["A", "B", "C"], "p")
    assert summary["B->C"] == {"p50_ms": 0.25, "p99_ms": 0.25}
    assert stage_summary(LOGS, ["A", "B", "C"], "nobody")["A->B"] == {"p50_ms": 0.0, "p99_ms": 0.0}
