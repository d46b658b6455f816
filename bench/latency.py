#!/usr/bin/env python3
"""The latency section of the benchmark suite (BENCH_ONLY=latency): real
round trips between two network namespaces joined by netlab's user-space
delay line (`httvps-netlab`), one profile after the other:

- A: 50 ms RTT (25 ms each way), no loss;
- B: 150 ms RTT (75 ms each way), 1 % loss each way: every IP packet that
  crosses the line, in either direction (handshakes, data and ACKs alike),
  is dropped independently with probability 0.01 (a seeded pseudo-random
  stream per direction), so a round trip loses a packet about 2 % of the
  time. Packet by packet, no reordering, no rate limit.

Not run unless named in BENCH_LAT_PROFILES:

- C: 150 ms RTT (75 ms each way) without loss: what of profile B comes
  from its round trips rather than from its losses.

Host `server` runs the control plane (SQLite), our gateway (self-signed),
our node, ssserver (shadowsocks-rust), ss-server behind a v2ray-plugin
server (TLS) and an HTTP target; host `client` runs one client at a time:
sslocal, ss-local + v2ray-plugin (mux=1 to the v2ray-plugin server; mux=0
to our gateway, which speaks one WebSocket per tunnel), and our client
without and with `--mux`. Every client is a SOCKS5 proxy; each fetch is a
new SOCKS5 CONNECT (a new tunnel) to the target.

Measured per client: time to the first response byte of a new tunnel on a
warm client and on a cold one (a freshly started process, no connection
open), a page load (30 parallel small fetches until all are complete),
one stream's bulk throughput, and a small fetch's latency while a bulk
transfer runs through the same client, against its latency alone. The
line alone is measured first: its ceiling (iperf3 through it at 0 ms) and
the round trip it adds at the set delay.

The probes (fetches, page loads, the bulk reader, the target) are in
bench/latency_probes.py.

The page load's row also gives the packets that crossed the line per
load in each direction (the line's counters around the loads; with
offload a "packet" is what the kernel handed the TUN device at once, up
to 64 KiB): each is a separate chance of a loss.

Environment: BENCH_LAT_PROFILES (A,B), BENCH_LAT_REPS (warm fetches and
fetches under bulk, default 15), BENCH_LAT_COLD (cold starts, default 6),
BENCH_LAT_PAGES (page loads, default 25: at 1 % loss a load's time depends
on whether and where it met a loss, so the median needs many), BENCH_LAT_BULK_SECONDS
(default 5), BENCH_LAT_CLIENTS (which clients, comma-separated, default
all: none, raw, v2mux, v2per, ours, oursmux; rows of the others say "not
measured"), BENCH_LAT_PRIME=1 (two 3 s bulk downloads through each client
before its page loads). Every client's page loads are also logged, sorted.
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from latency_probes import PAGE_FETCHES, fetch, listening, page_load, socks_ready

PROBES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "latency_probes.py")
PROFILES = {
    "A": {"label": "50 ms RTT", "delay_ms": 25, "loss": 0.0},
    "B": {"label": "150 ms RTT, 1 % loss each way", "delay_ms": 75, "loss": 0.01},
    "C": {"label": "150 ms RTT, no loss", "delay_ms": 75, "loss": 0.0},
}
REPS = int(os.environ.get("BENCH_LAT_REPS", "15"))
COLD = int(os.environ.get("BENCH_LAT_COLD", "6"))
PAGES = int(os.environ.get("BENCH_LAT_PAGES", "25"))
PRIME = os.environ.get("BENCH_LAT_PRIME") == "1"
BULK_SECONDS = float(os.environ.get("BENCH_LAT_BULK_SECONDS", "5"))
PEER_PASSWORD = "bench-peer-password"

RAW = "sslocal -> ssserver (shadowsocks-rust, raw)"
V2_MUX = "ss-local + v2ray-plugin mux=1 (TLS+WS) -> v2ray-plugin server -> ss-server"
V2_PER = "ss-local + v2ray-plugin mux=0 (TLS+WS per tunnel) -> our gateway -> node"
OURS = "ours: httvps-relay connect (TLS+WS per tunnel) -> gateway -> node"
OURS_MUX = "ours: httvps-relay connect --mux -> gateway -> node"
CLIENTS = (RAW, V2_MUX, V2_PER, OURS, OURS_MUX)
KEYS = {"none": None, "raw": RAW, "v2mux": V2_MUX, "v2per": V2_PER, "ours": OURS, "oursmux": OURS_MUX}
_named = [k.strip() for k in os.environ.get("BENCH_LAT_CLIENTS", ",".join(KEYS)).split(",") if k.strip()]
if any(k not in KEYS for k in _named):
    sys.exit(f"BENCH_LAT_CLIENTS: unknown client in {_named} (known: {', '.join(KEYS)})")
SELECTED = [KEYS[k] for k in _named]
SHORT = {RAW: "shadowsocks-rust (raw)", V2_MUX: "v2ray-plugin mux=1", V2_PER: "v2ray-plugin mux=0 via our gateway",
         OURS: "ours", OURS_MUX: "ours --mux"}

# --- Namespaces ------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextlib.contextmanager
def inside(netns):
    """Moves the calling thread into the network namespace `netns` for the
    block: sockets it opens, threads it starts and processes it spawns
    live there (namespaces are per thread and inherited)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns back home")
        os.close(target)
        os.close(home)


class Lab:
    """An `httvps-netlab up` process with two hosts joined by line `wan`."""

    def __init__(self, netlab, delay_ms, loss, log):
        line = f"wan=client,server,delay_ms={delay_ms}"
        if loss:
            line += f",loss={loss},seed=17"
        with open(log, "a") as err:
            self.proc = subprocess.Popen(
                [netlab, "up", "--name", "lat", "--line", line, "--exit-with-parent"],
                stdout=subprocess.PIPE, stderr=err, text=True)
        ready = self.proc.stdout.readline()
        if not ready:
            self.proc.wait(30)
            raise RuntimeError(f"httvps-netlab: {open(log).read().strip()[-300:]}")
        self.info = json.loads(ready)

    def ns(self, host):
        return self.info["hosts"][host]["netns"]

    def server_ip(self):
        return self.info["hosts"]["client"]["reach"]["server"]

    def stats(self):
        self.proc.send_signal(signal.SIGUSR1)
        return json.loads(self.proc.stdout.readline())["lines"]["wan"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            for line in self.proc.stdout:
                if json.loads(line).get("event") == "down":
                    break
        self.proc.wait(30)


# --- The section ----------------------------------------------------------


def make_cert(work, ip):
    """A self-signed leaf certificate for `localhost` and the server's line
    address (v2ray-plugin checks `host=localhost`, our client the IP)."""
    cfg = os.path.join(work, "cert.cnf")
    with open(cfg, "w") as f:
        f.write("[req]\ndistinguished_name=dn\nprompt=no\n[dn]\nCN=localhost\n[leaf]\n"
                "basicConstraints=critical,CA:FALSE\nkeyUsage=digitalSignature\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:{ip},IP:127.0.0.1\n")
    cert, key = os.path.join(work, "gw.crt"), os.path.join(work, "gw.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "2", "-config", cfg, "-extensions", "leaf", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key


def ceiling(s, netlab):
    """iperf3 through a 0 ms line (server to client, one stream, 3 s):
    (Mbit/s, packets dropped at the TUN queue)."""
    lab = Lab(netlab, 0, 0, os.path.join(s.WORK, "netlab.log"))
    try:
        with inside(lab.ns("server")):
            port = s.free_port()
            srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            deadline = time.time() + 10
            while not listening(port) and time.time() < deadline:  # a probe would be its one test
                time.sleep(0.01)
        with inside(lab.ns("client")):
            out = subprocess.run(["iperf3", "-c", lab.server_ip(), "-p", str(port), "-t", "3", "-R", "-J"],
                                 capture_output=True, timeout=60).stdout
        srv.wait(10)
        st = lab.stats()
        drops = st["a_to_b"]["queue_dropped"] + st["b_to_a"]["queue_dropped"]
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e6, drops
    finally:
        lab.close()


class Profile:
    """One profile: the lab, the servers, and every client measured."""

    def __init__(self, s, netlab, key, have_mux):
        self.s, self.key, self.have_mux = s, key, have_mux
        p = PROFILES[key]
        self.label, self.rtt = p["label"], 2 * p["delay_ms"] / 1000
        self.work = os.path.join(s.WORK, f"latency-{key}")
        os.makedirs(self.work, exist_ok=True)
        self.lab = Lab(netlab, p["delay_ms"], p["loss"], os.path.join(s.WORK, "netlab.log"))
        self.ip = self.lab.server_ip()
        self.cns = self.lab.ns("client")

    def start_servers(self):
        s = self.s
        self.cert, self.key_file = make_cert(self.work, self.ip)
        with inside(self.lab.ns("server")):
            self.plane = s.Plane(work=self.work, host="0.0.0.0", public_host=self.ip)
            self.method = self.plane.method
            tport = s.free_port()
            s.spawn(f"lat{self.key}-target", [sys.executable, PROBES, "target", str(tport)])
            self.ssport = s.free_port()
            s.spawn(f"lat{self.key}-ssserver", ["ssserver", "-s", f"0.0.0.0:{self.ssport}", "-m", self.method,
                                              "-k", PEER_PASSWORD])
            self.v2port = s.free_port()
            s.spawn(f"lat{self.key}-ss-server-v2ray",
                    ["ss-server", "-s", "0.0.0.0", "-p", str(self.v2port), "-k", PEER_PASSWORD, "-m", self.method,
                     "--plugin", "ss-v2ray-plugin", "--plugin-opts",
                     f"server;tls;host=localhost;cert={self.cert};key={self.key_file}"])
            for port in (tport, self.ssport, self.v2port):
                s.wait_port(port)
        self.dst = (self.ip, tport)

    def spawn_client(self, kind):
        """Starts `kind` in the client host (no waiting): (procs, SOCKS
        port, plugin port or None). Call inside the client host."""
        slug = SHORT[kind].split(" via")[0].replace(" ", "").replace("=", "")
        s, name, port = self.s, f"lat{self.key}-{slug}", self.s.free_port()
        if kind == RAW:
            return [s.spawn(name, ["sslocal", "-b", f"127.0.0.1:{port}", "-s", f"{self.ip}:{self.ssport}",
                                   "-m", self.method, "-k", PEER_PASSWORD])], port, None
        if kind in (V2_MUX, V2_PER):
            pport = s.free_port()
            if kind == V2_MUX:
                remote, pw = self.v2port, PEER_PASSWORD
                opts = f"tls;host=localhost;cert={self.cert};mux=1"
            else:
                remote, pw = self.plane.gw_port, self.plane.secret
                opts = f"tls;host=localhost;cert={self.cert};path=/ws/{self.plane.device}/tcp;mux=0"
            # What ss-local does with --plugin (SIP003), done by hand so
            # the plugin's port is known.
            plugin = s.spawn(name + "-plugin", ["ss-v2ray-plugin"], {
                "SS_REMOTE_HOST": self.ip, "SS_REMOTE_PORT": str(remote), "SS_LOCAL_HOST": "127.0.0.1",
                "SS_LOCAL_PORT": str(pport), "SS_PLUGIN_OPTIONS": opts})
            local = s.spawn(name, ["ss-local", "-s", "127.0.0.1", "-p", str(pport), "-l", str(port),
                                   "-b", "127.0.0.1", "-k", pw, "-m", self.method])
            return [plugin, local], port, pport
        env = {
            "CLIENT_BACKEND_URL": self.plane.base.replace("127.0.0.1", self.ip),
            "CLIENT_DEVICE_TOKEN": self.plane.device,
            "CLIENT_SOCKS": f"127.0.0.1:{port}",
            "CLIENT_GATEWAY_URL": f"https://{self.ip}:{self.plane.gw_port}",
            "CLIENT_CA_CERT": self.cert,
            # The control plane is plain HTTP across the line, as on
            # loopback in the other sections.
            "CLIENT_PRIVATE_LINK": "true",
            "RUST_LOG": "warn",
        }
        cmd = [f"{s.REL}/httvps-relay", "connect"] + (["--mux"] if kind == OURS_MUX else [])
        return [s.spawn(name, cmd, env)], port, None

    def ready(self, port, pport, timeout=30):
        deadline = time.perf_counter() + timeout
        while pport and not listening(pport):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"the plugin does not listen on {pport}")
            time.sleep(0.005)
        socks_ready(port, deadline)

    def cold(self, kind):
        """Median over COLD fresh starts: (seconds to the first byte of the
        first tunnel once the proxy answers, seconds from exec)."""
        ttfb, total = [], []
        for _ in range(COLD):
            t0 = time.perf_counter()
            procs, port, pport = self.spawn_client(kind)
            try:
                self.ready(port, pport)
                t1 = time.perf_counter()
                first, _ = fetch(port, self.dst)
                ttfb.append(first)
                total.append(t1 - t0 + first)
            finally:
                for p in procs:
                    self.s.stop(p)
        return statistics.median(ttfb), statistics.median(total)

    def bulk(self, socks, seconds):
        p = subprocess.Popen([sys.executable, PROBES, "bulk", "-" if socks is None else str(socks),
                              self.ip, str(self.dst[1]), str(seconds)], stdout=subprocess.PIPE)
        return p

    def warm(self, kind):
        """Everything measured on one running client."""
        procs, socks = [], None
        if kind is not None:
            procs, socks, pport = self.spawn_client(kind)
        r = {}
        try:
            if kind is not None:
                self.ready(socks, pport)
            for _ in range(3):
                fetch(socks, self.dst)
            runs = []
            for _ in range(REPS):
                runs.append(fetch(socks, self.dst))
                time.sleep(0.05)
            r["warm"] = statistics.median(f for f, _ in runs)
            r["alone"] = statistics.median(d for _, d in runs)
            if PRIME:
                # Bulk first, so each connection's congestion control has
                # seen the path's rate before the bursts of the page loads.
                for _ in range(2):
                    self.bulk(socks, 3).communicate(timeout=60)
            pages = []
            before = self.lab.stats()
            for _ in range(PAGES):
                pages.append(page_load(socks, self.dst))
                time.sleep(0.3)
            after = self.lab.stats()
            r["page"] = statistics.median(pages)
            self.s.log(f"  {SHORT[kind] if kind else 'no tunnel'}: page loads (ms, sorted): "
                       + " ".join(f"{p * 1000:.0f}" for p in sorted(pages)))
            # The client's host is the line's first end.
            r["page_out"] = (after["a_to_b"]["received"] - before["a_to_b"]["received"]) / PAGES
            r["page_back"] = (after["b_to_a"]["received"] - before["b_to_a"]["received"]) / PAGES
            out = json.loads(self.bulk(socks, BULK_SECONDS).communicate(timeout=BULK_SECONDS + 60)[0])
            r["bulk"] = out["bytes"] * 8 / out["seconds"] / 1e6
            b = self.bulk(socks, 600)
            try:
                time.sleep(max(1.5, 10 * self.rtt))  # past slow start
                under = []
                for _ in range(REPS):
                    under.append(fetch(socks, self.dst)[1])
                    time.sleep(0.05)
            finally:
                b.send_signal(signal.SIGTERM)
                out = json.loads(b.communicate(timeout=30)[0] or b'{"bytes": 0, "seconds": 1}')
            r["under"] = statistics.median(under)
            r["under_bulk"] = out["bytes"] * 8 / out["seconds"] / 1e6
        finally:
            for p in procs:
                self.s.stop(p)
        return r

    def connect_rtt(self, n=20):
        times = []
        for _ in range(n):
            t = time.perf_counter()
            socket.create_connection(self.dst, 10).close()
            times.append(time.perf_counter() - t)
            time.sleep(0.02)
        return statistics.median(times)

    def measure(self):
        s = self.s
        results = {}
        with inside(self.cns):
            results["rtt"] = self.connect_rtt()
            s.log(f"  TCP connect across the line: median {results['rtt'] * 1000:.1f} ms (RTT {self.rtt * 1000:.0f} ms)")
            for kind in (None, RAW, V2_MUX, V2_PER, OURS, OURS_MUX):
                if kind == OURS_MUX and not self.have_mux or kind not in SELECTED:
                    continue
                name = kind or "no tunnel"
                t = time.time()
                try:
                    r = self.warm(kind)
                    if kind is not None:
                        r["cold"], r["cold_exec"] = self.cold(kind)
                    results[kind] = r
                    s.log(f"  {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in r.items())
                          + f" ({time.time() - t:.0f} s)")
                except Exception as e:  # a client that fails is reported, not fatal
                    results[kind] = {"failed": str(e)[:200]}
                    s.log(f"  {name}: failed: {e}")
        return results


def section(s):
    """Runs the latency profiles; `s` is the suite module (rows, spawning,
    the control plane)."""
    s.log("== latency: real round trips over a delay line between namespaces ==")
    netlab = next((p for p in (os.path.join(s.REL, "httvps-netlab"),
                               os.path.join(s.ROOT, "target", "release", "httvps-netlab")) if os.path.exists(p)), None)
    why = None
    if os.geteuid() != 0:
        why = "needs root (network namespaces)"
    elif netlab is None:
        why = "no release build of httvps-netlab (cargo build --release -p httvps-netlab)"
    if why:
        s.log(f"  skipped: {why}")
        s.row("latency", "latency section", f"not run: {why}", "-", "-", "-", None)
        return
    s.log(f"  delay line: {netlab}")
    helptext = subprocess.run([f"{s.REL}/httvps-relay", "connect", "--help"], capture_output=True, text=True).stdout
    have_mux = "--mux" in helptext
    for key in filter(None, os.environ.get("BENCH_LAT_PROFILES", "A,B").split(",")):
        started, first_proc = time.time(), len(s.PROCS)
        s.log(f"-- profile {key}: {PROFILES[key]['label']} --")
        prof = None
        try:
            ceil = ceiling(s, netlab)
            s.log(f"  delay line at 0 ms: {ceil[0]:,.0f} Mbit/s, {ceil[1]} queue drops")
            prof = Profile(s, netlab, key, have_mux)
            prof.start_servers()
            results = prof.measure()
            stats = prof.lab.stats()
            report(s, prof, ceil, results, stats)
        except Exception as e:
            s.log(f"  profile {key} failed: {e}")
            s.row(f"latency {PROFILES[key]['label']}", "profile", f"failed: {e}", "-", "-", "-", False)
        finally:
            for p in reversed(s.PROCS[first_proc:]):
                s.stop(p)
            if prof is not None:
                prof.lab.close()
        s.log(f"  profile {key} took {time.time() - started:.0f} s")


# --- Rows ------------------------------------------------------------------


def targets(metric, kind, key):
    """The issue's target for a cell: (text, peer kind or None, test on the
    figure and the peer's) or None. Targets are set at 50 ms RTT except the
    page load's (both profiles) and the small fetch under bulk (both);
    profile C has none."""
    if key not in ("A", "B"):
        return None
    a = key == "A"
    if metric == "warm" and kind == OURS_MUX and a:
        return "<= 0.6x raw", RAW, lambda v, p: v <= 0.6 * p
    if metric == "cold" and kind in (OURS, OURS_MUX) and a:
        return "<= 4 RTT (median < 4.5 RTT)", None, None
    if metric == "page" and kind == OURS_MUX:
        if a:
            return "<= 0.7x raw", RAW, lambda v, p: v <= 0.7 * p
        return "<= 1.0x v2ray-plugin mux=1", V2_MUX, lambda v, p: v <= p
    if metric == "bulk" and kind in (OURS, OURS_MUX) and a:
        return ">= 0.9x raw", RAW, lambda v, p: v >= 0.9 * p
    if metric == "under" and kind in (OURS, OURS_MUX):
        return "<= 2x alone", None, None
    return None


TITLES = {
    "warm": "warm client, new tunnel: time to first byte (median)",
    "cold": "cold client (fresh process): first tunnel's time to first byte",
    "page": f"page load, {PAGE_FETCHES} parallel small fetches",
    "bulk": "bulk throughput, one stream",
    "under": "small fetch while a bulk transfer runs through the client",
}


def report(s, prof, ceil, res, stats):
    sec, rtt, key = f"latency {prof.label}", prof.rtt, prof.key

    def ms(v):
        return f"{v * 1000:.0f} ms"

    def rt(v):
        return f"{v * 1000:.0f} ms ({v / rtt:.1f} RTT)"

    def ok(kind):
        return kind in res and "failed" not in res[kind]

    fastest = max((res[k]["bulk"] for k in CLIENTS if ok(k)), default=0)
    s.row(sec, "delay line alone: ceiling (iperf3, 1 stream, 0 ms, server to client)",
          f"{ceil[0]:,.0f} Mbit/s ({ceil[1]} queue drops)", f"fastest bulk here {fastest:,.0f} Mbit/s",
          f"{ceil[0] / fastest:.1f}" if fastest else "-", ">= 2x the fastest bulk",
          bool(fastest) and ceil[0] >= 2 * fastest and ceil[1] == 0)
    s.row(sec, "delay line alone: TCP connect at the set delay (median of 20)", f"{res['rtt'] * 1000:.1f} ms",
          f"RTT {rtt * 1000:.0f} ms", f"{res['rtt'] / rtt:.2f}", "< RTT + 5 ms", res["rtt"] - rtt < 0.005)
    ab, ba = stats["a_to_b"], stats["b_to_a"]
    late = (ab["late_us_total"] + ba["late_us_total"]) / max(ab["delivered"] + ba["delivered"], 1)
    drops = ab["queue_dropped"] + ba["queue_dropped"]
    s.row(sec, "delay line over the profile (its counters)",
          f"lost {ab['lost']:,} of {ab['received']:,} packets client to server, {ba['lost']:,} of "
          f"{ba['received']:,} back; late by {late:.0f} us mean, {max(ab['late_us_max'], ba['late_us_max']) / 1000:.1f} "
          f"ms max; {drops} TUN queue drops", "-", "-", "no queue drops", drops == 0)
    if ok(None):
        d = res[None]
        s.row(sec, "no tunnel (the line alone), for reference",
              f"first byte {rt(d['warm'])}, page load {ms(d['page'])}, bulk {d['bulk']:,.0f} Mbit/s, "
              f"small fetch {ms(d['alone'])} alone, {ms(d['under'])} under bulk", "-", "-", "-", None)
    cell = {
        "warm": lambda r: rt(r["warm"]),
        "cold": lambda r: f"{rt(r['cold'])}; {ms(r['cold_exec'])} from exec",
        "page": lambda r: f"{ms(r['page'])} ({r['page_out']:.0f} packets out, {r['page_back']:.0f} back per load)",
        "bulk": lambda r: f"{r['bulk']:,.0f} Mbit/s",
        "under": lambda r: f"{ms(r['under'])} beside {r['under_bulk']:,.0f} Mbit/s of bulk, {ms(r['alone'])} alone",
    }
    for metric, title in TITLES.items():
        for kind in CLIENTS:
            measure = f"{title}, {SHORT[kind]}"
            t = targets(metric, kind, key)
            ttext = t[0] if t else "-"
            if kind == OURS_MUX and not prof.have_mux:
                s.row(sec, measure, "not available (httvps-relay connect has no --mux)", "-", "-", ttext, None)
                continue
            if kind not in SELECTED:
                s.row(sec, measure, "not measured (BENCH_LAT_CLIENTS)", "-", "-", ttext, None)
                continue
            if not ok(kind):
                s.row(sec, measure, f"failed: {res.get(kind, {}).get('failed', '?')}", "-", "-", ttext, False if t else None)
                continue
            r = res[kind]
            if metric == "under":
                v = r["under"] / r["alone"]
                peer = f"raw {res[RAW]['under'] / res[RAW]['alone']:.2f}x" if ok(RAW) else "-"
                s.row(sec, measure, cell[metric](r), peer, f"{v:.2f}", ttext, v <= 2 if t else None)
                continue
            if metric == "cold" and t:
                s.row(sec, measure, cell[metric](r), f"raw {rt(res[RAW]['cold'])}" if ok(RAW) else "-",
                      f"{r['cold'] / rtt:.1f} RTT", ttext, r["cold"] / rtt < 4.5)
                continue
            peer_kind = t[1] if t and t[1] else RAW
            if not ok(peer_kind) or kind == peer_kind:
                s.row(sec, measure, cell[metric](r), "-", "-", ttext, None)
                continue
            v, p = r[metric], res[peer_kind][metric]
            s.row(sec, measure, cell[metric](r), f"{SHORT[peer_kind]} {cell[metric](res[peer_kind])}",
                  f"{v / p:.2f}", ttext, t[2](v, p) if t else None)
        if metric == "warm" and key == "A":
            measure = f"{title}, ours --mux against per-tunnel WS+TLS ({SHORT[V2_PER]})"
            if ok(OURS_MUX) and ok(V2_PER):
                v, p = res[OURS_MUX]["warm"], res[V2_PER]["warm"]
                s.row(sec, measure, rt(v), rt(p), f"{v / p:.2f}", "<= 0.35x", v <= 0.35 * p)
            else:
                s.row(sec, measure, "not available" if not prof.have_mux else "failed", "-", "-", "<= 0.35x", None)
