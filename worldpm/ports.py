"""Free TCP ports: the rendezvous of a one-process training job, and servers started by scripts and tests. Torch-free."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now (another process may take it before you bind it: use it at once)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
