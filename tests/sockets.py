"""Raw-socket helpers shared by the test tiers: what a server sends back to a client that misbehaves."""

from __future__ import annotations

import socket


def read_until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """Everything the server sends on ``sock`` within ``limit_s``, and whether it then closed the connection."""
    sock.settimeout(limit_s)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return received, False
    return received, True
