"""A free TCP port on the loopback interface, for the nodes the demo, the conformance runner and the benchmarks start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that no socket holds right now.

    The port is released before it is returned, so another process may take
    it first; the callers start a node on it at once and report a node that
    does not come up.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
