"""What the bench scripts share (standard library only)."""
import socket, sys, time, urllib.request


def free_ports(n):
    """n free TCP ports on 127.0.0.1 (bound together, so they differ, then released)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def http(method, url, data=None, timeout=120, headers=None):
    """(status, body bytes) of one request; HTTP errors raise urllib.error.HTTPError."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def wait_http(url, secs=120):
    """Waits until `url` answers 200 (exits the script after `secs`)."""
    start = time.time()
    while time.time() - start < secs:
        try:
            if http("GET", url, timeout=2)[0] == 200:
                return
        except Exception:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} did not answer")
