"""The systemd conventions a node follows: readiness/watchdog messages to
``$NOTIFY_SOCKET`` (sd_notify), a listening socket passed in ``$LISTEN_FDS``
(socket activation), and log lines with a priority prefix when stdout is
journald's (``$JOURNAL_STREAM``). Each is a no-op when systemd did not ask."""

from __future__ import annotations

import os
import socket
from typing import IO


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``message`` (e.g. ``"READY=1"``) to systemd; False when not supervised
    or the socket is gone. Never raises."""
    path = (environ or os.environ).get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None."""
    env = environ or os.environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def activation_endpoint(environ: dict[str, str] | None = None) -> str | None:
    """The endpoint description for a socket systemd passed us, or None.

    Only the first passed socket (fd 3) is used; its address family picks
    Twisted's ``systemd:domain=INET|INET6`` endpoint. Call it before importing
    ``twisted.internet.endpoints``, which consumes ``$LISTEN_FDS`` on import."""
    env = environ or os.environ
    if env.get("LISTEN_PID") != str(os.getpid()) or not env.get("LISTEN_FDS", "0").isdigit():
        return None
    count = int(env["LISTEN_FDS"])
    if count < 1:
        return None
    if "LISTEN_FDNAMES" not in env:  # older launchers omit it; Twisted insists on it
        os.environ["LISTEN_FDNAMES"] = ":".join(["unknown"] * count)
    with socket.socket(fileno=os.dup(3)) as sock:
        family = sock.family
    domain = "INET6" if family == socket.AF_INET6 else "INET"
    return f"systemd:domain={domain}:index=0"


def is_journal_stream(fd: int, environ: dict[str, str] | None = None) -> bool:
    """True when ``fd`` is the stream systemd connected to journald: its device
    and inode are those ``$JOURNAL_STREAM`` names (``"<dev>:<inode>"``, see
    systemd.exec(5)). A child whose output we pipe elsewhere inherits the
    variable but not the stream, so the comparison, not the variable, decides."""
    dev, _, inode = (environ or os.environ).get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (OSError, ValueError):
        return False


def is_journal(out: IO[str]) -> bool:
    """:func:`is_journal_stream` of a file object (False when it has no descriptor)."""
    try:
        return is_journal_stream(out.fileno())
    except (OSError, ValueError):  # no file descriptor (io.UnsupportedOperation is both)
        return False
