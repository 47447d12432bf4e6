"""Operator tools, clients of the node like redis-cli is of Redis: up, status,
check, client, bench, chaos, and the process harness they share. The node
never imports them."""
