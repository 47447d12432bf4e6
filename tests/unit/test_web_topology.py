"""herd.web.topology: what /topology.json tells the page (SPEC 9, issue 18);
the page itself is tested in a browser by tests/herd/test_web.py."""

from __future__ import annotations

from pathlib import Path

from config.loader import load_config
from herd.web import REFRESH_SECONDS, topology


def test_topology_names_where_a_browser_reaches_each_node(tmp_path: Path) -> None:
    config = tmp_path / "herd.toml"
    config.write_text("""
[herd]
[nodes.A]
host = "10.0.0.1"
port = 10000
redis = "redis://127.0.0.1:6400"
peers = ["B", "C"]
admin = "0.0.0.0:9100"
[nodes.B]
host = "10.0.0.2"
port = 10000
redis = "redis://127.0.0.1:6400"
admin = "[::1]:9100"
[nodes.C]
host = "c.example"
port = 10000
redis = "redis://127.0.0.1:6400"
admin = "off"
[nodes.D]
host = "d.example"
port = 10000
redis = "redis://127.0.0.1:6400"
peers = ["C"]
""")
    assert topology(load_config(config), "B", client_data=False) == {
        "node": "B",
        "nodes": [{"name": "A", "admin": "10.0.0.1:9100"},  # a wildcard: the node's host
                  {"name": "B", "admin": "[::1]:9100"},
                  {"name": "C", "admin": None},
                  {"name": "D", "admin": "d.example:30000"}],
        "links": [["A", "B"], ["A", "C"], ["C", "D"]],
        "client_data": False,
        "refresh": REFRESH_SECONDS,
    }


def test_the_page_may_fetch_the_herds_admin_endpoints_only(tmp_path: Path) -> None:
    """Found by reviews: the policy allowed any http(s) address; then a CSP
    host cannot be an IPv6 address or hold an underscore: any host on that port."""
    from herd.web import page_policy

    (tmp_path / "herd.toml").write_text("""
[herd]
secret_env = "S"
[nodes.A]
host = "127.0.0.1"
port = 10000
redis = "redis://127.0.0.1:6400/0"
peers = ["B", "C"]
[nodes.B]
host = "::1"
port = 10001
redis = "redis://127.0.0.1:6401/0"
[nodes.C]
host = "node_c.example"
port = 10002
redis = "redis://127.0.0.1:6402/0"
admin = "node_c.example:30009"
""")
    policy = page_policy(load_config(str(tmp_path / "herd.toml"))).decode()
    assert "connect-src 'self' http://*:30001 http://*:30009 http://127.0.0.1:30000;" in policy, policy
