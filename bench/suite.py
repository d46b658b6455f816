#!/usr/bin/env python3
"""The httvps benchmark suite: every figure is measured against a peer in the
same run on the same machine, and the ratios are what count.

Run through `bench/run` (it installs the peers and builds first). Sections:
throughput (iperf3, 1 and 4 streams), tunnel setup (rate, p50, p99), the
end of a stream when the target closes first (no close tail),
gateway memory (per idle tunnel, 10,000 tunnels), the node's memory and
descriptors per idle tunnel, the control plane
(validate-device, assign-outline, usage ingestion on PostgreSQL with
BENCH_DEVICES devices, against pgbench select-only) and latency over a
delayed link between network namespaces (bench/latency.py). Prints a table
and writes BENCHMARKS.md.

Environment: BENCH_SECONDS (per throughput run, default 5), BENCH_DEVICES
(default 1000000), BENCH_SESSIONS (open sessions reported in the ingestion
run, default 200000), BENCH_TUNNELS (default 10000, or what the fd limit
allows), BENCH_ONLY (comma list of sections:
throughput,setup,close,memory,control,latency; the table's other
sections' rows are kept, and said to be older), BENCH_BIN_DIR (where the
release binaries are, default target/release),
BENCH_KEEP_DB=1 (keep the PostgreSQL database for profiling),
BENCH_PG_SSLMODE (the sslmode of the control plane's and pgbench's DSN,
alike; unset: libpq's default, prefer, which encrypts where the server
has ssl = on), BENCH_CP_LOG
(the control plane's RUST_LOG, e.g. httvps::control::usage_accounting=debug
for the applier's passes and statement times). The latency section's own
knobs are in bench/latency.py.
"""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import latency

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.abspath(os.environ.get("BENCH_BIN_DIR") or os.path.join(ROOT, "target", "release"))
LOAD = os.path.join(REL, "examples", "tunnel_load")
SECS = int(os.environ.get("BENCH_SECONDS", "5"))
DEVICES = int(os.environ.get("BENCH_DEVICES", "1000000"))
# Open sessions the ingestion run reports on (at 100,000 totals/s each is
# reported every 2 s, as gateways do).
SESSIONS = int(os.environ.get("BENCH_SESSIONS", "200000"))
# Each tunnel takes two descriptors in the gateway (client and node side),
# in our client and in the load generator: stay under the fd limit.
FD_LIMIT = __import__("resource").getrlimit(__import__("resource").RLIMIT_NOFILE)[0]
TUNNELS = int(os.environ.get("BENCH_TUNNELS", str(min(10000, (FD_LIMIT - 600) // 2 // 500 * 500))))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
PG_URL = os.environ.get("HTTVPS_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres")
PG_SSLMODE = os.environ.get("BENCH_PG_SSLMODE", "")
WORK = tempfile.mkdtemp(prefix="httvps-bench-")
PASSWORD = "bench password bench password"
SECRET_KEY = "bench-secret-bench-secret-bench-secret-0001"
PROCS = []
ROWS = []  # (section, measure, ours, peer, ratio, target, verdict)


def log(*a):
    print(*a, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(name, cmd, env=None):
    out = open(os.path.join(WORK, name + ".log"), "w")
    p = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    p.name = name
    PROCS.append(p)
    return p


def stop(p):
    """Ends a process we started, with its group (plugins are children)."""
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def http(method, url, body=None, token=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def gql(base, token, query, variables=None):
    r = http("POST", base + "/graphql", {"query": query, "variables": variables or {}}, token)
    if r.get("errors"):
        raise RuntimeError(f"GraphQL: {r['errors']}")
    return r["data"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def row(section, measure, ours, peer, ratio, target, ok):
    verdict = "-" if ok is None else ("met" if ok else "MISSED")
    ROWS.append((section, measure, ours, peer, ratio, target, verdict))
    log(f"  {measure}: {ours} | {peer} | {ratio} | {target} | {verdict}")


# --- The system under test, on the embedded default (SQLite) ---------------


class Plane:
    """Control plane (SQLite), one node, one gateway, one device. `work`
    holds the database and the gateway's certificate (made when missing);
    the control plane and the gateway listen on `host`, and clients reach
    the gateway as `public_host`."""

    def __init__(self, work=WORK, host="127.0.0.1", public_host="localhost"):
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        env = {
            "BACKEND_DB_DSN": f"sqlite://{work}/plane.db",
            "BACKEND_HOST": host,
            "BACKEND_SECRET_KEY": SECRET_KEY,
            "BACKEND_PORT": str(port),
            "RUST_LOG": "warn",
        }
        # The commands take only a database that exists (`migrate` makes it).
        subprocess.run(
            [f"{REL}/httvps", "migrate"],
            env={**os.environ, **env},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(
            [f"{REL}/httvps", "admin", "create", "--email", "bench@example.com", "--password-stdin"],
            input=PASSWORD.encode(),
            env={**os.environ, **env},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        spawn("control-plane", [f"{REL}/httvps", "serve"], env)
        wait_port(port)
        tok = gql(
            self.base,
            None,
            "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
            {"e": "bench@example.com", "p": PASSWORD},
        )["login"]["accessToken"]
        me = gql(self.base, tok, "{me{id}}")["me"]["id"]
        plan = gql(
            self.base,
            tok,
            'mutation{createRegion(code:"bench",name:"Bench"){id} '
            'createPlan(input:{name:"bench",priceCents:"0",durationDays:30,deviceLimit:5}){id}}',
        )["createPlan"]["id"]
        gql(
            self.base,
            tok,
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            {"u": me, "p": plan},
        )
        node_port = free_port()
        n = gql(
            self.base,
            tok,
            'mutation($p:Int!){registerOutlineNode(input:{region:"bench",name:"n1",host:"127.0.0.1",port:$p})'
            "{token node{method secret}}}",
            {"p": node_port},
        )["registerOutlineNode"]
        self.method, self.secret = n["node"]["method"], n["node"]["secret"]
        self.node = spawn(
            "node",
            [f"{REL}/httvps-relay", "node"],
            {
                "NODE_BACKEND_URL": self.base,
                "NODE_TOKEN": n["token"],
                "NODE_LISTEN": f"127.0.0.1:{node_port}",
                "NODE_ALLOW_PRIVATE": "true",
                "RUST_LOG": "warn",
            },
        )
        wait_port(node_port)
        self.gw_port = free_port()
        admin_port = free_port()
        g = gql(
            self.base,
            tok,
            'mutation($u:String!){registerGatewayNode(input:{region:"bench",name:"gw",publicUrl:$u}){token}}',
            {"u": f"https://{public_host}:{self.gw_port}"},
        )["registerGatewayNode"]
        self.cert, self.key = f"{work}/gw.crt", f"{work}/gw.key"
        self.gateway = spawn(
            "gateway",
            [f"{REL}/httvps-relay", "gateway"],
            {
                "GATEWAY_BACKEND_URL": self.base,
                "GATEWAY_TOKEN": g["token"],
                "GATEWAY_LISTEN": f"{host}:{self.gw_port}",
                "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
                "GATEWAY_TLS_CERT": self.cert,
                "GATEWAY_TLS_KEY": self.key,
                "GATEWAY_DATA_DIR": work,
                "GATEWAY_SELF_SIGNED": "true",
                "GATEWAY_PUBLIC_URL": f"https://{public_host}:{self.gw_port}",
                "GATEWAY_MAX_TUNNELS": str(TUNNELS * 2 + 1000),
                # Every load generator connects from 127.0.0.1.
                "GATEWAY_MAX_CONNECTIONS_PER_SOURCE": str(TUNNELS * 2 + 1000),
                "GATEWAY_MAX_TUNNELS_PER_DEVICE": str(TUNNELS * 2 + 1000),
                "RUST_LOG": "warn",
            },
        )
        wait_port(self.gw_port)
        self.device = gql(
            self.base, tok, 'mutation{registerDevice(name:"bench",platform:"linux"){accessToken}}'
        )["registerDevice"]["accessToken"]

    def client(self, name, forward=None, mux=False):
        """Our client: SOCKS5, or a port forward to `forward`; with `mux`, its
        tunnels are streams of one HTTP/2 connection. Returns (proc, port)."""
        port = free_port()
        env = {
            "CLIENT_BACKEND_URL": self.base,
            "CLIENT_DEVICE_TOKEN": self.device,
            "CLIENT_SOCKS": f"127.0.0.1:{port}",
            "CLIENT_GATEWAY_URL": f"https://localhost:{self.gw_port}",
            "CLIENT_CA_CERT": self.cert,
            "RUST_LOG": "warn",
        }
        if forward:
            env["CLIENT_FORWARD"] = forward
        if mux:
            env["CLIENT_MUX"] = "true"
        p = spawn(name, [f"{REL}/httvps-relay", "connect"], env)
        wait_port(port)
        return p, port


# --- Peers -----------------------------------------------------------------


def ss_tunnel(name, server_port, target, method, password, plugin_opts=None):
    port = free_port()
    cmd = ["ss-tunnel", "-s", "127.0.0.1", "-p", str(server_port), "-l", str(port), "-b", "127.0.0.1"]
    cmd += ["-L", target, "-k", password, "-m", method]
    if plugin_opts is not None:
        cmd += ["--plugin", "ss-v2ray-plugin", "--plugin-opts", plugin_opts]
    p = spawn(name, cmd)
    wait_port(port)
    if plugin_opts is not None:
        time.sleep(2)  # ss-tunnel listens before its plugin does
    return [p], port


def ss_server(name, method, password, plugin_opts=None):
    port = free_port()
    cmd = ["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", password, "-m", method]
    if plugin_opts is not None:
        cmd += ["--plugin", "ss-v2ray-plugin", "--plugin-opts", plugin_opts]
    p = spawn(name, cmd)
    wait_port(port)
    return p, port


def ssrust_server(method, password):
    port = free_port()
    p = spawn("ssserver", ["ssserver", "-s", f"127.0.0.1:{port}", "-m", method, "-k", password])
    wait_port(port)
    return p, port


def sslocal(name, server_port, method, password, forward=None):
    port = free_port()
    cmd = ["sslocal", "-b", f"127.0.0.1:{port}", "-s", f"127.0.0.1:{server_port}", "-m", method, "-k", password]
    if forward:
        cmd += ["--protocol", "tunnel", "--forward-addr", forward]
    p = spawn(name, cmd)
    wait_port(port)
    return p, port


# --- Sections --------------------------------------------------------------


def iperf(port, streams, reverse=False):
    """Mbit/s of one iperf3 upload through `port` (a download if `reverse`)."""
    out = subprocess.run(
        ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(SECS), "-P", str(streams), "-J"]
        + (["-R"] if reverse else []),
        capture_output=True,
        timeout=SECS + 60,
    )
    r = json.loads(out.stdout or b"{}")
    if "error" in r:
        raise RuntimeError(r["error"])
    return r["end"]["sum_received"]["bits_per_second"] / 1e6


def throughput(plane):
    log("== throughput (iperf3 through each pipeline) ==")
    iport = free_port()
    spawn("iperf3-server", ["iperf3", "-s", "-p", str(iport)])
    wait_port(iport)
    target = f"127.0.0.1:{iport}"
    m, pw = plane.method, "bench-peer-password"
    tls_server = f"server;tls;host=localhost;cert={plane.cert};key={plane.key}"
    tls_client = f"tls;host=localhost;cert={plane.cert}"

    def ours():
        p, port = plane.client("client-forward", forward=target)
        return [p], port

    def ours_mux():
        p, port = plane.client("client-forward-mux", forward=target, mux=True)
        return [p], port

    def stock_through_ours():
        opts = f"{tls_client};path=/ws/{plane.device}/tcp;mux=0"
        return ss_tunnel("ss-tunnel-ours", plane.gw_port, target, plane.method, plane.secret, opts)

    def v2ray_tls():
        s, sport = ss_server("ss-server-v2ray", m, pw, tls_server)
        procs, port = ss_tunnel("ss-tunnel-v2ray", sport, target, m, pw, tls_client)
        return [s] + procs, port

    def websockify_tls():
        s, sport = ss_server("ss-server-ws", m, pw)
        wport = free_port()
        w = spawn(
            "websockify",
            ["websockify", "--cert", plane.cert, "--key", plane.key, f"127.0.0.1:{wport}", f"127.0.0.1:{sport}"],
        )
        wait_port(wport)
        procs, port = ss_tunnel("ss-tunnel-ws", wport, target, m, pw, f"{tls_client};mux=0")
        return [s, w] + procs, port

    def raw_libev():
        s, sport = ss_server("ss-server-raw", m, pw)
        procs, port = ss_tunnel("ss-tunnel-raw", sport, target, m, pw)
        return [s] + procs, port

    def raw_rust():
        s, sport = ssrust_server(m, pw)
        c, port = sslocal("sslocal-tunnel", sport, m, pw, forward=target)
        return [s, c], port

    pipelines = [
        ("raw TCP (no tunnel)", lambda: ([], iport)),
        ("ours: client -> gateway (TLS+WS) -> node", ours),
        ("ours --mux: client -> gateway (TLS+h2+WS streams) -> node", ours_mux),
        ("stock ss-tunnel+v2ray-plugin -> our gateway -> node", stock_through_ours),
        ("ss-tunnel+v2ray-plugin (TLS+WS) -> v2ray-plugin -> ss-server", v2ray_tls),
        ("ss-tunnel+v2ray-plugin (TLS+WS) -> websockify (TLS) -> ss-server", websockify_tls),
        ("ss-tunnel -> ss-server (libev, raw)", raw_libev),
        ("sslocal -> ssserver (shadowsocks-rust, raw)", raw_rust),
    ]
    got = {}
    for name, start in pipelines:
        procs = []
        try:
            procs, port = start()
            time.sleep(0.3)
            for streams in (1, 4):
                mbps = iperf(port, streams)
                got[(name, streams)] = mbps
                log(f"  {name}, {streams} stream(s): {mbps:,.0f} Mbit/s")
        except Exception as e:  # a peer that fails is reported, not fatal
            log(f"  {name}: failed: {e}")
        finally:
            for p in procs:
                stop(p)
    ours_name, mux_name = pipelines[1][0], pipelines[2][0]
    stock_ws = [pipelines[4][0], pipelines[5][0]]
    rust_name = pipelines[-1][0]
    for streams in (1, 4):
        m_o = got.get((mux_name, streams))
        r = got.get((rust_name, streams))
        if m_o is None or r is None:
            row("throughput", f"{streams} stream(s) --mux vs {rust_name}", fmt_mbps(m_o), fmt_mbps(r), "-", ">= 0.8x", False)
        else:
            ratio = m_o / r if r else 0
            row("throughput", f"{streams} stream(s) --mux vs {rust_name}", fmt_mbps(m_o), fmt_mbps(r), f"{ratio:.2f}", ">= 0.8x", ratio >= 0.8)
    for streams in (1, 4):
        o = got.get((ours_name, streams))
        for name, mbps in [(n, got.get((n, streams))) for n, _ in pipelines if n not in (ours_name, mux_name)]:
            if mbps is None:
                row("throughput", f"{streams} stream(s) vs {name}", fmt_mbps(o), "failed", "-", "-", None)
                continue
            ratio = o / mbps if o else 0
            target_txt, ok = "-", None
            if name in stock_ws:
                target_txt, ok = ">= 2x", ratio >= 2
            elif "shadowsocks-rust" in name:
                target_txt, ok = ">= 0.7x", ratio >= 0.7
            row("throughput", f"{streams} stream(s) vs {name}", fmt_mbps(o), fmt_mbps(mbps), f"{ratio:.2f}", target_txt, ok)
        best = max((got.get((n, streams)) or 0) for n in stock_ws)
        if best and o:
            ratio = o / best
            row("throughput", f"{streams} stream(s) vs best stock WS+TLS", fmt_mbps(o), fmt_mbps(best), f"{ratio:.2f}", ">= 2x", ratio >= 2)


def fmt_mbps(v):
    return "failed" if v is None else f"{v:,.0f} Mbit/s"


def load(*args, timeout=120):
    out = subprocess.run([LOAD, *map(str, args)], capture_output=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-500:])
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def setup_rate(plane):
    log("== tunnel setup (SOCKS5 connect + 32-byte round trip, 16 at a time) ==")
    p, port = plane.client("client-socks")
    pm, mport = plane.client("client-socks-mux", mux=True)
    m, pw = plane.method, "bench-peer-password"
    s, sport = ssrust_server(m, pw)
    c, cport = sslocal("sslocal-socks", sport, m, pw)
    try:
        load("setup", f"127.0.0.1:{port}", 1, 4)  # warms the validation cache
        ours = load("setup", f"127.0.0.1:{port}", 8, 16)
        load("setup", f"127.0.0.1:{mport}", 1, 4)
        mux = load("setup", f"127.0.0.1:{mport}", 8, 16)
        peer = load("setup", f"127.0.0.1:{cport}", 8, 16)
    finally:
        for x in (p, pm, s, c):
            stop(x)
    log(f"  ours {ours}\n  ours --mux {mux}\n  shadowsocks-rust {peer}")
    mratio = mux["rate"] / peer["rate"] if peer["rate"] else 0
    row("setup", "new tunnels per second, --mux", f"{mux['rate']:,.0f}/s ({mux['errors']} errors)",
        f"{peer['rate']:,.0f}/s ({peer['errors']} errors)", f"{mratio:.2f}", ">= 1.0x", mratio >= 1.0)
    mp99 = mux["p99_ms"] / max(peer["p99_ms"], 1e-9)
    row("setup", "p99 latency incl. setup, --mux", f"{mux['p99_ms']:.2f} ms", f"{peer['p99_ms']:.2f} ms",
        f"{mp99:.2f}", "<= 1.5x", mp99 <= 1.5)
    ratio = ours["rate"] / peer["rate"] if peer["rate"] else 0
    row("setup", "new tunnels per second", f"{ours['rate']:,.0f}/s ({ours['errors']} errors)",
        f"{peer['rate']:,.0f}/s ({peer['errors']} errors)", f"{ratio:.2f}", ">= 0.5x", ratio >= 0.5)
    row("setup", "p50 latency incl. setup", f"{ours['p50_ms']:.2f} ms", f"{peer['p50_ms']:.2f} ms",
        f"{ours['p50_ms'] / max(peer['p50_ms'], 1e-9):.2f}", "-", None)
    p99 = ours["p99_ms"] / max(peer["p99_ms"], 1e-9)
    row("setup", "p99 latency incl. setup", f"{ours['p99_ms']:.2f} ms", f"{peer['p99_ms']:.2f} ms",
        f"{p99:.2f}", "<= 2x", p99 <= 2)


def reply_server(body):
    """A target that answers each request with `body` and closes first."""
    import threading
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)

    def serve(c):
        with c:
            seen = b""
            while b"\r\n\r\n" not in seen:
                d = c.recv(4096)
                if not d:
                    return
                seen += d
            c.sendall(body)

    def accept():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv.getsockname()[1]


def fetch_to_end(port, size, rounds=30):
    """Median seconds from connecting to the end of the reply, over `rounds`
    sequential fetches (every reply checked for its full length)."""
    times = []
    for _ in range(rounds):
        t = time.time()
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            got = 0
            while True:
                d = c.recv(65536)
                if not d:
                    break
                got += len(d)
        if got != size:
            raise RuntimeError(f"{got} of {size} bytes")
        times.append(time.time() - t)
    times.sort()
    return times[len(times) // 2]


def close_tail(plane):
    log("== end of stream when the target closes first (100 KiB reply, 30 sequential fetches) ==")
    size = 100 * 1024
    target = f"127.0.0.1:{reply_server(os.urandom(size))}"
    m, pw = plane.method, "bench-peer-password"

    def ours():
        p, port = plane.client("client-close", forward=target)
        return [p], port

    def stock_through_ours():
        opts = f"tls;host=localhost;cert={plane.cert};path=/ws/{plane.device}/tcp;mux=0"
        return ss_tunnel("ss-tunnel-close", plane.gw_port, target, plane.method, plane.secret, opts)

    def raw_rust():
        s, sport = ssrust_server(m, pw)
        c, port = sslocal("sslocal-close", sport, m, pw, forward=target)
        return [s, c], port

    got = {}
    for name, start in [("ours", ours), ("v2ray-plugin via ours", stock_through_ours), ("raw", raw_rust)]:
        procs = []
        try:
            procs, port = start()
            fetch_to_end(port, size, 3)  # warms the validation cache
            got[name] = fetch_to_end(port, size)
            log(f"  {name}: median {got[name] * 1000:.1f} ms to the end of the reply")
        except Exception as e:
            log(f"  {name}: failed: {e}")
        finally:
            for p in procs:
                stop(p)
    raw = got.get("raw")
    for name in ("ours", "v2ray-plugin via ours"):
        v = got.get(name)
        if v is None or raw is None:
            row("close", f"time to the end of a reply, {name}", "failed" if v is None else f"{v * 1000:.1f} ms",
                "failed" if raw is None else f"{raw * 1000:.1f} ms", "-", "-", None)
            continue
        tail = v - raw
        row("close", f"time to the end of a 100 KiB reply the target ends, {name}", f"{v * 1000:.1f} ms",
            f"shadowsocks-rust {raw * 1000:.1f} ms", f"{v / raw:.2f}", "< 100 ms over raw", tail < 0.1)


def hold(port, count):
    """Opens `count` tunnels through the SOCKS proxy at `port`; returns (proc, opened)."""
    p = subprocess.Popen([LOAD, "hold", f"127.0.0.1:{port}", str(count)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = p.stdout.readline()
    return p, json.loads(line or b'{"open": 0, "failed": -1}')


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def memory(plane):
    log("== gateway and node memory with idle tunnels ==")
    p, port = plane.client("client-hold")
    gw, node = plane.gateway.pid, plane.node.pid
    try:
        load("setup", f"127.0.0.1:{port}", 1, 2)
        time.sleep(1)
        base = rss_kib(gw)
        node_base = (rss_kib(node), fds(node))
        results, node_results = {}, {}
        for count in (1000, TUNNELS):
            h, opened = hold(port, count)
            time.sleep(2)
            results[count] = (rss_kib(gw), opened)
            node_results[count] = (rss_kib(node), fds(node))
            log(f"  {count} tunnels: {opened}, gateway RSS {results[count][0]:,} KiB (base {base:,} KiB), "
                f"node RSS {node_results[count][0]:,} KiB and {node_results[count][1]:,} fds "
                f"(base {node_base[0]:,} KiB, {node_base[1]} fds)")
            h.stdin.close()
            h.wait(60)
            time.sleep(3)
    finally:
        stop(p)
    for count, (rss, opened) in results.items():
        per = (rss - base) / max(opened["open"], 1)
        row("memory", f"gateway KiB per idle tunnel ({count} open)", f"{per:.1f} KiB", "-", "-", "<= 32 KiB", per <= 32)
        (node_rss, node_fds), n = node_results[count], max(opened["open"], 1)
        node_kib, node_per = (node_rss - node_base[0]) / n, (node_fds - node_base[1]) / n
        row("memory", f"node KiB and descriptors per idle tunnel ({count} open)",
            f"{node_kib:.1f} KiB, {node_per:.2f} fds", "-", "-", "2 fds", node_per <= 2.05)
    rss, opened = results[TUNNELS]
    if TUNNELS < 10000:
        log(f"  note: the fd limit here is {FD_LIMIT}; 10,000 tunnels need over 20,000 descriptors per process")
    row("memory", f"{TUNNELS} tunnels held (fd limit {FD_LIMIT})", f"{opened['open']} open, {opened['failed']} failed, RSS {rss / 1024:.0f} MiB",
        "-", "-", f"{TUNNELS} held", opened["open"] == TUNNELS)


# --- Control plane on PostgreSQL -------------------------------------------


def psql(dsn, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn], input=sql.encode(), check=True,
                   stdout=subprocess.DEVNULL)


def wrk(url, script, conns, seconds):
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script, url],
        capture_output=True, timeout=seconds + 60,
    ).stdout.decode()
    rps = float(next(l.split()[1] for l in out.splitlines() if l.startswith("Requests/sec")))
    p99 = next((l.split()[1] for l in out.splitlines() if l.strip().startswith("99%")), "?")
    non2xx = next((int(l.split()[-1]) for l in out.splitlines() if "Non-2xx" in l), 0)
    errors = next((l.strip() for l in out.splitlines() if "Socket errors" in l), "")
    return rps, p99, non2xx, errors


GATEWAY_TOKEN = "benchgatewaytoken00000000000000000000000000"
NODE_TOKEN = "benchnodetoken00000000000000000000000000000"


def control_plane():
    log(f"== control plane on PostgreSQL (sslmode {PG_SSLMODE or 'unset: prefer'}), {DEVICES:,} devices ==")
    subprocess.run([os.path.join(ROOT, "scripts", "ensure-postgres.sh")], check=True)
    db = "httvps_bench"
    base_url = PG_URL.rsplit("/", 1)[0]
    # The same DSN, and so the same TLS, for our server and for pgbench.
    dsn = f"{base_url}/{db}" + (f"?sslmode={PG_SSLMODE}" if PG_SSLMODE else "")
    psql(PG_URL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE);\nCREATE DATABASE {db};")
    subprocess.run([f"{REL}/httvps", "migrate", "--db-dsn", dsn], check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "RUST_LOG": "warn"})
    t = time.time()
    users = (DEVICES + 9) // 10
    psql(dsn, f"""
INSERT INTO plans (id, name, price_cents, currency, duration_days, traffic_limit_bytes, device_limit, reset_period, archived, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000001','bench',0,'USD',30,NULL,100,'none',false,now(),now());
INSERT INTO regions (id, code, name, pool_method, pool_secret, created_at)
  VALUES ('00000000-0000-4000-8000-000000000002','bench','Bench','chacha20-ietf-poly1305','benchbenchbenchbench',now());
INSERT INTO users SELECT '10000000-0000-4000-8000-' || lpad(i::text, 12, '0'), 'u' || i || '@bench.test', 'x', 'user', 'active', 0, now(), now()
  FROM generate_series(1, {users}) i;
INSERT INTO subscriptions (id, user_id, plan_id, status, starts_at, expires_at, traffic_limit_bytes, traffic_used_bytes, period_start, created_at, updated_at, device_limit)
  SELECT '20000000-0000-4000-8000-' || lpad(i::text, 12, '0'), '10000000-0000-4000-8000-' || lpad(i::text, 12, '0'),
  '00000000-0000-4000-8000-000000000001', 'active', now() - interval '1 day', now() + interval '30 days', NULL, 0, now(), now(), now(), 100
  FROM generate_series(1, {users}) i;
INSERT INTO devices SELECT '30000000-0000-4000-8000-' || lpad(i::text, 12, '0'), '10000000-0000-4000-8000-' || lpad(((i + 9) / 10)::text, 12, '0'),
  'd' || i, 'linux', 'active', encode(sha256(('bench' || lpad(i::text, 38, '0'))::bytea), 'hex'), NULL, now(), NULL
  FROM generate_series(1, {DEVICES}) i;
INSERT INTO gateway_nodes (id, region_id, name, public_url, token_hash, status, health, last_heartbeat_at, open_tunnels, version, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000003','00000000-0000-4000-8000-000000000002','gw','https://gw.bench',
  encode(sha256('{GATEWAY_TOKEN}'::bytea), 'hex'),'active','unknown',NULL,0,NULL,now(),now());
INSERT INTO outline_nodes (id, region_id, name, host, port, method, secret, uses_pool_key, status, health, capacity, token_hash, last_heartbeat_at, created_at, updated_at)
  VALUES ('00000000-0000-4000-8000-000000000004','00000000-0000-4000-8000-000000000002','n1','10.0.0.1',8388,
  'chacha20-ietf-poly1305','benchbenchbenchbench',true,'active','up',10000000, encode(sha256('{NODE_TOKEN}'::bytea), 'hex'), NULL, now(), now());
""")
    # Settle the bulk load before measuring: no autovacuum or checkpoint
    # should land in the middle of a run.
    subprocess.run(["psql", "-q", "-d", dsn, "-c", "VACUUM ANALYZE", "-c", "CHECKPOINT"], check=True,
                   stdout=subprocess.DEVNULL)
    log(f"  seeded in {time.time() - t:.0f} s")
    port = free_port()
    server = spawn("control-plane-pg", [f"{REL}/httvps", "serve"], {
        "BACKEND_DB_DSN": dsn, "BACKEND_SECRET_KEY": SECRET_KEY, "BACKEND_PORT": str(port),
        "BACKEND_DB_POOL_SIZE": "32", "RUST_LOG": os.environ.get("BENCH_CP_LOG", "warn")})
    wait_port(port)
    def device_script(name, devices):
        path = os.path.join(WORK, name)
        with open(path, "w") as f:
            # Each of wrk's threads runs the script in a Lua state of its
            # own: seeded alike, both would ask for the same devices in the
            # same order, and half the calls would meet a call for the same
            # device in flight (a lock wait on its new session, not a first
            # call).
            f.write(LUA_THREAD_IDS + f"""
function init(args)
  math.randomseed(os.time() * 16 + tid)
end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {GATEWAY_TOKEN}"
request = function()
  local i = math.random(1, {devices})
  return wrk.format(nil, nil, nil, string.format('{{"device_token":"bench%038d"}}', i))
end
""")
        return path

    script = device_script("device.lua", DEVICES)
    # A gateway's repeat call: the first 5,000 devices, each with its
    # session open (a warm-up run opens them), so a call reads and reuses.
    repeaters = min(DEVICES, 5000)
    repeat = device_script("repeat.lua", repeaters)
    seconds = max(SECS * 2, 10)
    try:
        results = {}
        pgbench_init(dsn)
        wrk(f"http://127.0.0.1:{port}/api/v1/auth/validate-device", script, 50, 3)  # warm-up
        # The peer right before and right after: the machine's load drifts,
        # and the mean of the two brackets our run.
        before = pgbench(dsn, seconds)
        for route in ("auth/validate-device", "nodes/assign-outline"):
            rps, p99, bad, errs = wrk(f"http://127.0.0.1:{port}/api/v1/{route}", script, 50, seconds)
            results[route] = (rps, p99, bad)
            log(f"  {route}: {rps:,.0f} req/s, p99 {p99}, non-2xx {bad} {errs}")
            if route.startswith("auth"):
                after = pgbench(dsn, seconds)
        assign = f"http://127.0.0.1:{port}/api/v1/nodes/assign-outline"
        wrk(assign, repeat, 50, seconds)  # opens the sessions
        rps, p99, bad, errs = wrk(assign, repeat, 50, seconds)
        repeated = (rps, p99, bad)
        log(f"  assign-outline, repeat calls: {rps:,.0f} req/s, p99 {p99}, non-2xx {bad} {errs}")
        pg_rps = (before + after) / 2
        # Ingestion: open sessions, one per device, reported in chunks of 200.
        ingest = ingestion(port, dsn, max(SECS * 6, 30))
        witnessed = ingestion(port, dsn, max(SECS * 6, 30), witness=True)
    finally:
        stop(server)
        if not os.environ.get("BENCH_KEEP_DB"):
            psql(PG_URL, f"DROP DATABASE IF EXISTS {db} WITH (FORCE);")
    # validate-device is one indexed read; assign-outline also opens a
    # session (random devices: nearly every call is a device's first).
    floors = {"auth/validate-device": 0.5, "nodes/assign-outline": 0.3}
    for route, (rps, p99, bad) in results.items():
        ratio = rps / pg_rps
        floor = floors[route]
        log(f"  {route}: {ratio:.2f}x pgbench select-only (floor {floor}x)")
        row("control plane", f"{route}, 50 callers, {DEVICES:,} devices",
            f"{rps:,.0f} req/s, p99 {p99}, {bad} errors", f"pgbench -S {pg_rps:,.0f} tps", f"{ratio:.2f}",
            f">= {floor}x", ratio >= floor and bad == 0)
    rps, p99, bad = repeated
    row("control plane", f"nodes/assign-outline, repeat calls ({repeaters:,} devices, each with its session open), 50 callers",
        f"{rps:,.0f} req/s, p99 {p99}, {bad} errors", f"pgbench -S {pg_rps:,.0f} tps", f"{rps / pg_rps:.2f}",
        "-", None if bad == 0 else False)
    if ingest:
        accepted, sustained, drain, sessions, bad, consistent, _ = ingest
        row("control plane", f"usage ingestion, {sessions:,} open sessions, reports of 200 totals, 16 callers",
            f"{sustained:,.0f} totals/s applied ({accepted:,.0f}/s accepted, inbox empty {drain:.1f} s "
            f"after the load; {bad} errors; ledger {'consistent' if consistent else 'INCONSISTENT'})",
            "-", "-", ">= 100,000/s", sustained >= 100_000 and bad == 0 and consistent)
    if witnessed:
        accepted, sustained, drain, sessions, bad, consistent, node = witnessed
        row("control plane", f"usage ingestion with the node witness, {sessions:,} linked sessions, "
            "16 callers, 5 gateway reports for every one of the node (every 2 s and every 10 s)",
            f"{sustained:,.0f} gateway totals/s + {node:,.0f} node totals/s applied "
            f"(inbox empty {drain:.1f} s after the load; {bad} errors; "
            f"ledger {'consistent' if consistent else 'INCONSISTENT'})",
            "gateway reports alone" if not ingest else f"{ingest[1]:,.0f}/s alone",
            "-" if not ingest else f"{sustained / max(ingest[1], 1):.2f}",
            ">= 100,000/s gateway totals", sustained >= 100_000 and bad == 0 and consistent)


def scalar(dsn, sql):
    out = subprocess.run(["psql", "-At", "-d", dsn, "-c", sql], capture_output=True, check=True)
    return out.stdout.decode().strip()


# Numbers each of wrk's threads (`tid`, from 0): every thread runs the
# script in a Lua state of its own.
LUA_THREAD_IDS = """
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
"""


def lua_preamble(items_file):
    """What the report scripts share: each of wrk's two threads numbered
    (`tid`), the session ids of `items_file` read into `items`, 200 per
    batch, and the request counters at zero."""
    return LUA_THREAD_IDS + f"""
function init(args)
  items = {{}}
  for line in io.lines("{items_file}") do items[#items + 1] = line end
  batches = math.floor(#items / 200)
  counter, gw, node = 0, 0, 0
end
"""


def report_script(name, items_file, token, key, entry):
    """A wrk script posting `{key: [200 entries]}` bodies: entry `c` of
    batch `b` is `string.format(entry)` over the `c`-th line of
    `items_file` (`items[c]`) and a value `v` that grows with every
    request. Each of wrk's two threads owns every other batch."""
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(lua_preamble(items_file) + f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
request = function()
  counter = counter + 1
  local b = ((counter * 2 + tid) % batches)
  local v = counter * 1000 + tid
  local parts = {{}}
  for i = 1, 200 do
    local c = b * 200 + i
    parts[i] = string.format({entry})
  end
  return wrk.format(nil, nil, nil, '{{"{key}":[' .. table.concat(parts, ",") .. ']}}')
end
""")
    return path


def mixed_script(name, items_file):
    """A wrk script posting gateway usage reports (`usage/report`) and node
    witness reports (`outline/witness`) of the same sessions, 200 each, 5
    of the gateway's for every one of the node's. Totals grow with every
    request; the node's upload runs a little ahead of the gateway's and its
    download behind (the ledger takes the larger of each). Each of wrk's
    two threads owns every other batch."""
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(lua_preamble(items_file) + f"""
local gw_headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {GATEWAY_TOKEN}"}}
local node_headers = {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {NODE_TOKEN}"}}
request = function()
  counter = counter + 1
  local v = counter * 1000 + tid
  local parts = {{}}
  if counter % 6 ~= 0 then
    gw = gw + 1
    local b = ((gw * 2 + tid) % batches)
    for i = 1, 200 do
      parts[i] = string.format('{{"session_id":"%s","seq":%d,"bytes_up":%d,"bytes_down":%d}}', items[b * 200 + i], v, v, v)
    end
    return wrk.format("POST", "/api/v1/usage/report", gw_headers, '{{"reports":[' .. table.concat(parts, ",") .. ']}}')
  end
  node = node + 1
  local b = ((node * 2 + tid) % batches)
  for i = 1, 200 do
    parts[i] = string.format('{{"session_id":"%s","epoch":1,"bytes_up":%d,"bytes_down":%d}}', items[b * 200 + i], v + 7, v - 7)
  end
  return wrk.format("POST", "/api/v1/outline/witness", node_headers, '{{"sessions":[' .. table.concat(parts, ",") .. ']}}')
end
""")
    return path


def ingestion(port, dsn, seconds, witness=False):
    """Gateways reporting cumulative totals for SESSIONS open sessions (at
    100,000 totals/s each session is reported every 2 s, as a gateway does).
    The rate that counts is the sustained one: every accepted total applied
    to sessions, ledger and subscriptions, up to the moment the inbox is
    empty again. With `witness`, every session is first linked to a node
    connection (`usage/links`) and the node, having learned the session of
    each of its connections, reports its own totals of every session
    (`outline/witness`, 200 sessions per report) in the same stream of
    requests, one for every 5 of the gateway's, as a node reporting open
    sessions every 10 s beside a gateway reporting every 2 s does."""
    sessions = min(SESSIONS, DEVICES)
    prefix = "41000000" if witness else "40000000"
    psql(dsn, f"""
UPDATE sessions SET ended_at = now(), end_reason = 'idle' WHERE ended_at IS NULL;
INSERT INTO sessions (id, device_id, outline_node_id, gateway_node_id, started_at, last_activity_at, bytes_up, bytes_down, last_seq)
  SELECT '{prefix}-0000-4000-8000-' || lpad(i::text, 12, '0'), '30000000-0000-4000-8000-' || lpad(i::text, 12, '0'),
  '00000000-0000-4000-8000-000000000004', '00000000-0000-4000-8000-000000000003', now(), now(), 0, 0, 0
  FROM generate_series(1, {sessions}) i;
""")
    subprocess.run(["psql", "-q", "-d", dsn, "-c", "VACUUM ANALYZE", "-c", "CHECKPOINT"], check=True,
                   stdout=subprocess.DEVNULL)
    ids_file = os.path.join(WORK, "sessions.txt")
    with open(ids_file, "w") as f:
        f.write("\n".join(f"{prefix}-0000-4000-8000-{i:012d}" for i in range(1, sessions + 1)))
    ids = [f"{prefix}-0000-4000-8000-{i:012d}" for i in range(1, sessions + 1)]
    peers = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:40000" for i in range(1, sessions + 1)]
    if witness:
        # The gateway's links: which node connection carries which session.
        for at in range(0, sessions, 200):
            links = [{"session_id": sid, "local": peer}
                     for sid, peer in zip(ids[at:at + 200], peers[at:at + 200])]
            http("POST", f"http://127.0.0.1:{port}/api/v1/usage/links", {"links": links}, GATEWAY_TOKEN)
    if witness:
        # One stream of requests at the real mix: for the same open
        # sessions a gateway reports every 2 s and a node every 10 s, so 5
        # gateway reports for every one of the node.
        script = mixed_script("mixed.lua", ids_file)
    else:
        script = report_script("ingest.lua", ids_file, GATEWAY_TOKEN, "reports",
                               """'{"session_id":"%s","seq":%d,"bytes_up":%d,"bytes_down":%d}', items[c], v, v, v""")
    t0 = time.time()
    rps, p99, bad, errs = wrk(f"http://127.0.0.1:{port}/api/v1/usage/report", script, 16, seconds)
    loaded = time.time() - t0
    t1 = time.time()
    while int(scalar(dsn, "SELECT count(*) FROM usage_inbox")) > 0 and time.time() - t1 < 300:
        time.sleep(0.1)
    drain = time.time() - t1
    node_rps = rps / 6 if witness else 0.0
    rps -= node_rps
    accepted = rps * 200
    sustained = accepted * seconds / (seconds + drain)
    node_sustained = node_rps * 200 * seconds / (seconds + drain)
    if witness:
        log(f"  outline/witness: {node_rps:,.0f} req/s x 200 = {node_rps * 200:,.0f} totals/s accepted; "
            f"{node_sustained:,.0f} totals/s sustained")
    # Every byte applied once: sessions, ledger and subscriptions agree.
    sums = scalar(dsn, "SELECT (SELECT sum(bytes_up + bytes_down) FROM sessions), "
                       "(SELECT sum(delta_up + delta_down) FROM usage_hours), "
                       "(SELECT sum(traffic_used_bytes) FROM subscriptions)").split("|")
    entries = scalar(dsn, "SELECT count(*) FROM usage_hours")
    consistent = len(set(sums)) == 1
    log(f"  usage/report: {rps:,.0f} req/s x 200 = {accepted:,.0f} totals/s accepted, p99 {p99}, "
        f"non-2xx {bad} {errs}; inbox empty {drain:.1f} s after {loaded:.1f} s of load: "
        f"{sustained:,.0f} totals/s sustained; {entries} ledger entries; sums {sums}")
    return accepted, sustained, drain, sessions, bad, consistent, node_sustained


def pgbench_init(dsn):
    subprocess.run(["pgbench", "-q", "-i", "-s", "10", dsn], check=True, capture_output=True)
    subprocess.run(["psql", "-q", "-d", dsn, "-c", "CHECKPOINT"], check=True, stdout=subprocess.DEVNULL)


def pgbench(dsn, seconds):
    out = subprocess.run(["pgbench", "-S", "-c", "50", "-j", "2", "-T", str(seconds), dsn],
                         capture_output=True, check=True).stdout.decode()
    tps = float(next(l.split("=")[1].split()[0] for l in out.splitlines() if l.startswith("tps")))
    log(f"  pgbench select-only, 50 clients: {tps:,.0f} tps")
    return tps


# --- Report ----------------------------------------------------------------


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}"


SECTIONS = ["throughput", "setup", "close", "memory", "control", "latency"]


def merge_rows(previous, lines, sections):
    """A partial run's rows (`BENCH_ONLY`) in the previous table: rows of
    the sections run replace theirs, the others' rows stay, in the suite's
    order. Returns the rows and a sentence saying what was kept."""
    def key(line):
        # A row's section is the first word of its first cell ("control
        # plane", "latency 50 ms RTT").
        return line[2:].split(" | ", 1)[0].split(" ", 1)[0]

    old = [l for l in previous.splitlines()
           if l.startswith("| ") and not l.startswith("| section |")]
    when = next((l.split(":", 1)[1].strip() for l in previous.splitlines()
                 if l.startswith("## Latest run:")), "an earlier run")
    merged, others = [], []
    for name in SECTIONS:
        if name in sections:
            merged += [l for l in lines if key(l) == name]
        else:
            rows = [l for l in old if key(l) == name]
            merged += rows
            if rows:
                others.append(name)
    if not others:
        return merged, ""
    return merged, (f" Sections run: {', '.join(n for n in SECTIONS if n in sections)}; "
                    f"{', '.join(others)} kept from the table of {when}.")


def write_report(started, sections):
    header = [
        "| section | measure | ours | peer | ratio | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    lines = [f"| {' | '.join(r)} |" for r in ROWS]
    log("\n" + "\n".join(header + lines))
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    marker = "<!-- latest run -->"
    intro = text.split(marker)[0].rstrip() + "\n\n"
    kept = ""
    if ONLY and marker in text:
        lines, kept = merge_rows(text.split(marker, 1)[1], lines, sections)
    run = [
        marker,
        f"## Latest run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"Machine: {machine()}. Suite time: {time.time() - started:.0f} s "
        f"(throughput runs of {SECS} s; control plane on PostgreSQL with {DEVICES:,} devices).{kept}",
        "",
        *header,
        *lines,
        "",
    ]
    with open(path, "w") as f:
        f.write(intro + "\n".join(run))
    log(f"\nwritten to {path}")


def main():
    started = time.time()
    sections = ONLY or set(SECTIONS)
    try:
        if sections & {"throughput", "setup", "close", "memory"}:
            plane = Plane()
            if "throughput" in sections:
                throughput(plane)
            if "setup" in sections:
                setup_rate(plane)
            if "close" in sections:
                close_tail(plane)
            if "memory" in sections:
                memory(plane)
        if "control" in sections:
            control_plane()
        if "latency" in sections:
            latency.section(sys.modules[__name__])
    finally:
        for p in reversed(PROCS):
            stop(p)
    write_report(started, sections)
    log(f"logs in {WORK}")


if __name__ == "__main__":
    sys.exit(main())
