"""A free TCP port for a server a test starts."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port of 127.0.0.1 nobody listens on now (the OS's choice)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
