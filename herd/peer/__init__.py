"""Peer links: registry and flooding, reconciliation, dialling and TLS."""
