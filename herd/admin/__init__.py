"""A node's admin HTTP endpoint (SPEC section 9; the protocol is
docs/ADMIN-HTTP.md): ``/healthz``, ``/metrics`` and ``/status``, figures
only, never client data (the web page it mounts, herd.web, serves client data
at ``/clients.json`` only to a request carrying the admin token).

It reads the running node through :class:`herd.admin.view.RunningNode` and
never imports herd.service, which wires it in.
"""

from __future__ import annotations

from herd.admin.site import admin_site
from herd.admin.view import Addresses

__all__ = ["Addresses", "admin_site"]
