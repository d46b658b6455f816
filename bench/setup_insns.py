#!/usr/bin/env python3
"""Instructions per tunnel setup in each data-plane process, by callgrind.

Usage: bench/setup_insns.py BINS_DIR OUT_DIR [--n 300] [--conc 4] [--warm 20] [--mux] [--peer] [--no-ours]
       bench/setup_insns.py BINS_DIR OUT_DIR --strace [--n 300] ...   (syscalls per tunnel instead)

Starts the plane the way bench/suite.py's Plane does (control plane on
SQLite, one node, one gateway with a self-signed certificate, our client as
a SOCKS5 proxy), but with the node, the gateway and the client each under
`valgrind --tool=callgrind`. The control plane runs natively (it is not
measured). After `--warm` warm-up tunnels (validation cache, TLS state) it
measures two windows in each process with `callgrind_control -z PID` /
`callgrind_control -d PID`:

  idle window: nothing happens for IDLE seconds (background timers only);
  load window: exactly N tunnels, each a SOCKS5 CONNECT plus one 32-byte
               round trip to a local echo server, C at a time, then the
               connections closed and SETTLE seconds for the teardown.

Ir per tunnel = load-window Ir / N; the idle window shows the background
rate (reported; "net" subtracts it scaled to the load window's length).

With --mux our client carries the tunnels over its warm HTTP/2
connections (`httvps-relay connect --mux`). With --peer it measures sslocal -> ssserver (shadowsocks-rust) the same way.
Writes OUT_DIR/result.json and prints it.
"""

import argparse
import asyncio
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

PASSWORD = "bench password bench password"
SECRET_KEY = "bench-secret-bench-secret-bench-secret-0001"
PROCS = []


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Ctx:
    pass


C = Ctx()


def spawn(name, cmd, env=None, mode="callgrind"):
    """mode: callgrind | strace | native."""
    out = open(os.path.join(C.work, name + ".log"), "w")
    if mode == "callgrind":
        cmd = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={C.out}/{name}.cg",
            "--dump-instr=no",
            *cmd,
        ]
    elif mode == "strace":
        cmd = ["strace", "-f", "-ttt", "-qq", "-o", f"{C.out}/{name}.strace", *cmd]
    p = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    p.name = name
    p.mode = mode
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_port(port, timeout=180):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def http(method, url, body=None, token=None, timeout=60):
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


# --- the plane, as bench/suite.py's Plane, measured processes under a tool ---


def start_plane(bins, mode, mux=False):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "BACKEND_DB_DSN": f"sqlite://{C.work}/plane.db",
        "BACKEND_SECRET_KEY": SECRET_KEY,
        "BACKEND_PORT": str(port),
        "RUST_LOG": "warn",
    }
    # The commands take only a database that exists (`migrate` makes it).
    subprocess.run(
        [f"{bins}/httvps", "migrate"],
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    subprocess.run(
        [f"{bins}/httvps", "admin", "create", "--email", "bench@example.com", "--password-stdin"],
        input=PASSWORD.encode(),
        env={**os.environ, **env},
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )
    spawn("control-plane", [f"{bins}/httvps", "serve"], env, mode="native")
    wait_port(port)
    tok = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        {"e": "bench@example.com", "p": PASSWORD},
    )["login"]["accessToken"]
    me = gql(base, tok, "{me{id}}")["me"]["id"]
    plan = gql(
        base,
        tok,
        'mutation{createRegion(code:"bench",name:"Bench"){id} '
        'createPlan(input:{name:"bench",priceCents:"0",durationDays:30,deviceLimit:5}){id}}',
    )["createPlan"]["id"]
    gql(base, tok, "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}", {"u": me, "p": plan})
    node_port = free_port()
    n = gql(
        base,
        tok,
        'mutation($p:Int!){registerOutlineNode(input:{region:"bench",name:"n1",host:"127.0.0.1",port:$p})'
        "{token node{method secret}}}",
        {"p": node_port},
    )["registerOutlineNode"]
    method, secret = n["node"]["method"], n["node"]["secret"]
    node = spawn(
        "node",
        [f"{bins}/httvps-relay", "node"],
        {
            "NODE_BACKEND_URL": base,
            "NODE_TOKEN": n["token"],
            "NODE_LISTEN": f"127.0.0.1:{node_port}",
            "NODE_ALLOW_PRIVATE": "true",
            "RUST_LOG": "warn",
        },
        mode,
    )
    wait_port(node_port)
    gw_port, admin_port = free_port(), free_port()
    g = gql(
        base,
        tok,
        'mutation($u:String!){registerGatewayNode(input:{region:"bench",name:"gw",publicUrl:$u}){token}}',
        {"u": f"https://localhost:{gw_port}"},
    )["registerGatewayNode"]
    cert, key = f"{C.work}/gw.crt", f"{C.work}/gw.key"
    tunnels = 10000
    gw = spawn(
        "gateway",
        [f"{bins}/httvps-relay", "gateway"],
        {
            "GATEWAY_BACKEND_URL": base,
            "GATEWAY_TOKEN": g["token"],
            "GATEWAY_LISTEN": f"127.0.0.1:{gw_port}",
            "GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
            "GATEWAY_TLS_CERT": cert,
            "GATEWAY_TLS_KEY": key,
            "GATEWAY_SELF_SIGNED": "true",
            "GATEWAY_PUBLIC_URL": f"https://localhost:{gw_port}",
            "GATEWAY_MAX_TUNNELS": str(tunnels * 2 + 1000),
            # Every load generator connects from 127.0.0.1.
            "GATEWAY_MAX_CONNECTIONS_PER_SOURCE": str(tunnels * 2 + 1000),
            "GATEWAY_MAX_TUNNELS_PER_DEVICE": str(tunnels * 2 + 1000),
            "RUST_LOG": "warn",
        },
        mode,
    )
    wait_port(gw_port)
    device = gql(base, tok, 'mutation{registerDevice(name:"bench",platform:"linux"){accessToken}}')[
        "registerDevice"
    ]["accessToken"]
    cport = free_port()
    cl = spawn(
        "client",
        [f"{bins}/httvps-relay", "connect"],
        {
            "CLIENT_BACKEND_URL": base,
            "CLIENT_DEVICE_TOKEN": device,
            "CLIENT_SOCKS": f"127.0.0.1:{cport}",
            "CLIENT_GATEWAY_URL": f"https://localhost:{gw_port}",
            "CLIENT_CA_CERT": cert,
            "CLIENT_MUX": "true" if mux else "false",
            "RUST_LOG": "warn",
        },
        mode,
    )
    wait_port(cport)
    return {"client": cl, "gateway": gw, "node": node}, cport, method


def start_peer(method, mode):
    pw = "bench-peer-password"
    sport = free_port()
    s = spawn("ssserver", ["ssserver", "-s", f"127.0.0.1:{sport}", "-m", method, "-k", pw], mode=mode)
    wait_port(sport)
    lport = free_port()
    c = spawn(
        "sslocal",
        ["sslocal", "-b", f"127.0.0.1:{lport}", "-s", f"127.0.0.1:{sport}", "-m", method, "-k", pw],
        mode=mode,
    )
    wait_port(lport)
    return {"sslocal": c, "ssserver": s}, lport


# --- load: exactly n tunnels, as examples/tunnel_load.rs's `setup` does each ---


class Echo:
    """Echo server on its own thread and event loop (not measured)."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.port = None
        ready = threading.Event()

        async def handle(r, w):
            try:
                while True:
                    b = await r.read(4096)
                    if not b:
                        break
                    w.write(b)
                    await w.drain()
            except Exception:
                pass
            finally:
                w.close()

        async def main():
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
            self.port = srv.sockets[0].getsockname()[1]
            ready.set()
            await asyncio.Event().wait()

        threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True).start()
        ready.wait(10)


async def one_tunnel(socks_port, echo_port, n=32):
    r, w = await asyncio.open_connection("127.0.0.1", socks_port)
    try:
        w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = bytes([5, 1, 0, 5, 1, 0, 1, 127, 0, 0, 1]) + echo_port.to_bytes(2, "big")
        w.write(req)
        await w.drain()
        reply = await r.readexactly(12)
        if reply[1] != 0 or reply[3] != 0:
            raise RuntimeError(f"SOCKS refused: {reply!r}")
        ping = b"p" * n
        w.write(ping)
        await w.drain()
        back = await r.readexactly(n)
        if back != ping:
            raise RuntimeError("echo mismatch")
    finally:
        w.close()
        try:
            await w.wait_closed()
        except Exception:
            pass


async def run_tunnels(socks_port, echo_port, count, conc, timeout=120):
    todo = list(range(count))
    errors = []

    async def worker():
        while todo:
            todo.pop()
            try:
                await asyncio.wait_for(one_tunnel(socks_port, echo_port), timeout)
            except Exception as e:
                errors.append(repr(e))

    await asyncio.gather(*(worker() for _ in range(conc)))
    return errors


def tunnels(socks_port, echo_port, count, conc):
    t = time.time()
    errors = asyncio.run(run_tunnels(socks_port, echo_port, count, conc))
    return time.time() - t, errors


# --- callgrind windows ---------------------------------------------------------


def ctl(arg, p):
    out = subprocess.run(["callgrind_control", arg, str(p.pid)], capture_output=True, timeout=120, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"callgrind_control {arg} {p.name}: {out.stdout}{out.stderr}")


def latest_dump(p):
    files = glob.glob(f"{C.out}/{p.name}.cg.*")
    files = [f for f in files if re.search(r"\.cg\.\d+$", f)]
    return max(files, key=lambda f: int(f.rsplit(".", 1)[1]))


def dump_ir(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def window(procs, action, label):
    """Zero every process, run action(), dump every process; Ir per process."""
    for p in procs.values():
        ctl("-z", p)
    t0 = time.time()
    info = action()
    secs = time.time() - t0
    got = {}
    for name, p in procs.items():
        ctl("-d", p)
        path = latest_dump(p)
        os.rename(path, f"{C.out}/{name}.{label}.cg")
        got[name] = dump_ir(f"{C.out}/{name}.{label}.cg")
    return got, secs, info


def measure_callgrind(procs, socks_port, echo, a, label):
    log(f"{label}: warm-up, {a.warm} tunnels")
    secs, errs = tunnels(socks_port, echo.port, a.warm, a.conc)
    log(f"  warm-up took {secs:.1f} s, errors {len(errs)} {errs[:3]}")
    time.sleep(a.settle)
    log(f"{label}: idle window {a.idle} s")
    idle, idle_secs, _ = window(procs, lambda: time.sleep(a.idle), f"{label}-idle")
    log(f"  idle Ir: {idle}")

    def load():
        secs, errs = tunnels(socks_port, echo.port, a.n, a.conc)
        time.sleep(a.settle)
        return secs, errs

    log(f"{label}: load window, {a.n} tunnels at {a.conc}")
    load_ir, load_secs, (tsecs, errs) = window(procs, load, f"{label}-load")
    log(f"  load Ir: {load_ir}; tunnels took {tsecs:.1f} s, window {load_secs:.1f} s, errors {len(errs)} {errs[:3]}")
    res = {"n": a.n, "conc": a.conc, "errors": len(errs), "tunnel_secs": tsecs, "window_secs": load_secs,
           "idle_secs": idle_secs, "procs": {}}
    for name in procs:
        bg_rate = idle[name] / idle_secs
        res["procs"][name] = {
            "load_ir": load_ir[name],
            "idle_ir": idle[name],
            "ir_per_tunnel": load_ir[name] / a.n,
            "net_ir_per_tunnel": (load_ir[name] - bg_rate * load_secs) / a.n,
        }
    res["total_ir_per_tunnel"] = sum(v["ir_per_tunnel"] for v in res["procs"].values())
    res["total_net_ir_per_tunnel"] = sum(v["net_ir_per_tunnel"] for v in res["procs"].values())
    return res


# --- strace windows ---------------------------------------------------------


def count_syscalls(path, t0, t1):
    n = 0
    calls = {}
    with open(path) as f:
        for line in f:
            parts = line.split(None, 2)
            if len(parts) < 3:
                continue
            try:
                ts = float(parts[1])
            except ValueError:
                continue
            if not (t0 <= ts <= t1) or "resumed>" in parts[2] or parts[2].startswith("+++") or parts[2].startswith("---"):
                continue
            n += 1
            m = re.match(r"(\w+)\(", parts[2])
            if m:
                calls[m.group(1)] = calls.get(m.group(1), 0) + 1
    return n, calls


def measure_strace(procs, socks_port, echo, a, label):
    secs, errs = tunnels(socks_port, echo.port, a.warm, a.conc)
    time.sleep(a.settle)
    t0 = time.time()
    secs, errs = tunnels(socks_port, echo.port, a.n, a.conc)
    time.sleep(a.settle)
    t1 = time.time()
    for p in procs.values():
        stop(p)
    res = {"n": a.n, "errors": len(errs), "procs": {}}
    for name in procs:
        n, calls = count_syscalls(f"{C.out}/{name}.strace", t0, t1)
        top = dict(sorted(calls.items(), key=lambda kv: -kv[1])[:12])
        res["procs"][name] = {"syscalls_per_tunnel": n / a.n, "top_per_tunnel": {k: v / a.n for k, v in top.items()}}
    res["total_syscalls_per_tunnel"] = sum(v["syscalls_per_tunnel"] for v in res["procs"].values())
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bins")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--conc", type=int, default=4)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--idle", type=float, default=5)
    ap.add_argument("--settle", type=float, default=3)
    ap.add_argument("--mux", action="store_true")
    ap.add_argument("--peer", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--strace", action="store_true")
    a = ap.parse_args()
    bins = os.path.abspath(a.bins)
    C.out = os.path.abspath(a.out)
    os.makedirs(C.out, exist_ok=True)
    C.work = tempfile.mkdtemp(prefix="setup-insns-")
    mode = "strace" if a.strace else "callgrind"
    measure = measure_strace if a.strace else measure_callgrind
    echo = Echo()
    result = {"mux": a.mux, "bins": bins, "commit": open(f"{bins}/COMMIT").read().strip() if os.path.exists(f"{bins}/COMMIT") else None,
              "mode": mode}
    try:
        if not a.no_ours:
            procs, socks, method = start_plane(bins, mode, a.mux)
            log(f"plane up (method {method}), client SOCKS 127.0.0.1:{socks}")
            result["ours"] = measure(procs, socks, echo, a, "ours")
            for p in procs.values():
                stop(p)
        else:
            method = "chacha20-ietf-poly1305"
        if a.peer:
            procs, socks = start_peer(method, mode)
            log(f"peer up, sslocal SOCKS 127.0.0.1:{socks}")
            result["peer"] = measure(procs, socks, echo, a, "peer")
            for p in procs.values():
                stop(p)
    finally:
        for p in reversed(PROCS):
            stop(p)
    with open(f"{C.out}/result.json", "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
