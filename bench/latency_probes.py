#!/usr/bin/env python3
"""The latency section's probes (bench/latency.py): SOCKS5 fetches, page
loads and bulk reads as a client host runs them, and the HTTP target.

Run as a helper process: `latency_probes.py target PORT` (the target:
/small answers SMALL bytes with a Content-Length, /bulk streams until the
client goes) or `latency_probes.py bulk SOCKS_PORT|- IP PORT SECONDS` (one
bulk read, its JSON result on stdout).
"""

import json
import os
import signal
import socket
import threading
import time

PAGE_FETCHES = 30
SMALL = 2048  # bytes in a small response


# --- Client-side probes (run inside the client host) -----------------------


def connect(socks, dst, timeout=15):
    """A socket to `dst` (ip, port): straight, or through the SOCKS5 proxy
    on 127.0.0.1:`socks` as a browser does it (greeting, then CONNECT)."""
    if socks is None:
        c = socket.create_connection(dst, timeout)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return c
    c = socket.create_connection(("127.0.0.1", socks), timeout)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"\x05\x01\x00")
    if recv_exact(c, 2) != b"\x05\x00":
        raise RuntimeError("SOCKS5 greeting refused")
    c.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(dst[0]) + dst[1].to_bytes(2, "big"))
    head = recv_exact(c, 4)
    if head[1] != 0:
        raise RuntimeError(f"SOCKS5 CONNECT failed: {head[1]}")
    kind = head[3]  # the bound address that follows: IPv4, name or IPv6
    size = 4 if kind == 1 else 16 if kind == 4 else recv_exact(c, 1)[0]
    recv_exact(c, size + 2)
    return c


def recv_exact(c, n):
    buf = b""
    while len(buf) < n:
        d = c.recv(n - len(buf))
        if not d:
            raise RuntimeError("connection closed early")
        buf += d
    return buf


def fetch(socks, dst, path="/small"):
    """One small fetch through a new tunnel: (seconds to the first
    response byte, seconds to the complete response), from the start of
    the connection to the proxy."""
    t0 = time.perf_counter()
    with connect(socks, dst) as c:
        c.sendall(f"GET {path} HTTP/1.1\r\nHost: target\r\n\r\n".encode())
        got = c.recv(65536)
        first = time.perf_counter() - t0
        while b"\r\n\r\n" not in got:
            d = c.recv(65536)
            if not d:
                raise RuntimeError("no complete response head")
            got += d
        head, body = got.split(b"\r\n\r\n", 1)
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        while len(body) < length:
            d = c.recv(65536)
            if not d:
                raise RuntimeError(f"{len(body)} of {length} body bytes")
            body += d
        return first, time.perf_counter() - t0


def page_load(socks, dst):
    """Seconds until 30 parallel small fetches (30 new tunnels) are all
    complete."""
    done, errors = [], []
    gate = threading.Barrier(PAGE_FETCHES + 1)

    def one():
        gate.wait()
        try:
            done.append(fetch(socks, dst)[1])
        except Exception as e:  # counted; the load is then not complete
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(PAGE_FETCHES)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    gate.wait()
    for t in threads:
        t.join(60)
    if errors or len(done) != PAGE_FETCHES:
        raise RuntimeError(f"page load: {len(errors)} failed fetches: {errors[:1]}")
    return time.perf_counter() - t0


def socks_ready(port, deadline):
    """Polls until the proxy on 127.0.0.1:`port` answers a SOCKS5 greeting
    (ours only answers once it has its parameters from the control plane)."""
    while time.perf_counter() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5) as c:
                c.settimeout(max(deadline - time.perf_counter(), 0.1))
                c.sendall(b"\x05\x01\x00")
                if c.recv(2) == b"\x05\x00":
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"no SOCKS5 answer on 127.0.0.1:{port}")


def bulk_reader(socks, dst, seconds):
    """One stream of /bulk for `seconds` from the request (SIGTERM ends it
    early); prints {"bytes", "seconds"}."""
    got, t0 = 0, time.perf_counter()

    def report(*_):
        print(json.dumps({"bytes": got, "seconds": time.perf_counter() - t0}), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, report)
    c = connect(socks, dst, timeout=60)
    c.sendall(b"GET /bulk HTTP/1.1\r\nHost: target\r\n\r\n")
    buf = bytearray(1 << 20)
    end = t0 + seconds
    while time.perf_counter() < end:
        n = c.recv_into(buf)
        if not n:
            break
        got += n
    report()


# --- The target (run inside the server host) -------------------------------


def target_server(port):
    """HTTP target on `port`: /small answers SMALL bytes with a
    Content-Length, /bulk streams until the client goes."""
    srv = socket.create_server(("0.0.0.0", port), backlog=1024)
    small = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % SMALL + b"s" * SMALL
    chunk = memoryview(os.urandom(1 << 18))

    def serve(c):
        with c:
            seen = b""
            while b"\r\n\r\n" not in seen:
                d = c.recv(4096)
                if not d:
                    return
                seen += d
            try:
                if seen.startswith(b"GET /bulk"):
                    c.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                    while True:
                        c.sendall(chunk)
                else:
                    c.sendall(small)
            except OSError:
                pass

    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def listening(port):
    """Whether something listens on `port` in the calling thread's
    namespace (read from /proc, without connecting: a connection to
    v2ray-plugin would make it dial the server and warm it up)."""
    with open("/proc/thread-self/net/tcp") as f:
        return any(l.split()[1].endswith(f":{port:04X}") and l.split()[3] == "0A" for l in f.readlines()[1:])


if __name__ == "__main__":
    import sys

    if sys.argv[1] == "target":
        target_server(int(sys.argv[2]))
    elif sys.argv[1] == "bulk":
        socks = None if sys.argv[2] == "-" else int(sys.argv[2])
        bulk_reader(socks, (sys.argv[3], int(sys.argv[4])), float(sys.argv[5]))
