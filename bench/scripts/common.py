"""What the bench scripts share (standard library only)."""
import socket


def free_ports(n):
    """n free TCP ports on 127.0.0.1 (bound together, so they differ, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports
