#!/usr/bin/env python3
"""Measures the delay line's own ceiling and accuracy (README "Measured").

Runs, as root, with iperf3 installed and a release build of the binary:

    cargo build --release -p httvps-netlab
    python3 crates/netlab/scripts/ceiling.py [--bin target/release/httvps-netlab] [--seconds 5]

Prints markdown tables: TCP throughput (iperf3, 1 and 4 streams) through a
plain veth pair, a lab link (veth + bridge) and the delay line (0 and 25 ms
one way, packet by packet and with offload, default and large TCP buffers),
with the line's CPU time; then TCP connect times across a 25 ms line, idle
and beside a bulk transfer; then the loss share measured at the receiver.
Everything runs in namespaces it creates and removes; no traffic leaves
them.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

BIG_WINDOWS = [
    "--sysctl", "net.ipv4.tcp_wmem=4096 16384 67108864",
    "--sysctl", "net.ipv4.tcp_rmem=4096 131072 67108864",
]


class Lab:
    """An `httvps-netlab up` process and its ready line."""

    def __init__(self, binary, args):
        self.proc = subprocess.Popen(
            [binary, "up", *args], stdout=subprocess.PIPE, text=True
        )
        self.info = json.loads(self.proc.stdout.readline())
        assert self.info["event"] == "ready", self.info

    def ns(self, host):
        return self.info["hosts"][host]["netns"]

    def reach(self, src, dst):
        return self.info["hosts"][src]["reach"][dst]

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self):
        self.proc.send_signal(signal.SIGUSR1)
        return json.loads(self.proc.stdout.readline())["lines"]

    def close(self):
        self.proc.send_signal(signal.SIGTERM)
        for line in self.proc.stdout:
            if json.loads(line)["event"] == "down":
                break
        self.proc.wait()


def in_ns(ns, *cmd, **kw):
    return ["ip", "netns", "exec", ns, *cmd]


def iperf(client_ns, server_ns, addr, streams, seconds):
    """Runs an iperf3 server in server_ns and a client in client_ns."""
    server = subprocess.Popen(
        in_ns(server_ns, "iperf3", "-s", "-1"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    time.sleep(0.3)
    out = subprocess.run(
        in_ns(client_ns, "iperf3", "-c", addr, "-t", str(seconds),
              "-P", str(streams), "-J"),
        capture_output=True, text=True, check=True,
    ).stdout
    server.wait(timeout=10)
    end = json.loads(out)["end"]
    return end["sum_received"]["bits_per_second"] / 1e6, end["sum_sent"].get("retransmits", 0)


def plain_veth(binary, seconds):
    """A veth pair straight between two namespaces, no bridge, no line."""
    pre = f"hv-{os.getpid()}-plain-"
    a, b = pre + "a", pre + "b"
    try:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "-n", a, "link", "add", "v", "type", "veth",
                        "peer", "name", "v", "netns", b], check=True)
        for ns, addr in ((a, "198.18.200.1/30"), (b, "198.18.200.2/30")):
            subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", "v"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "v", "up"], check=True)
        return [iperf(a, b, "198.18.200.2", p, seconds) + (None, None) for p in (1, 4)]
    finally:
        subprocess.run([binary, "cleanup", "--prefix", pre], stdout=subprocess.DEVNULL)


def through_lab(binary, args, src, dst, seconds, line=None):
    lab = Lab(binary, args)
    try:
        rows = []
        for p in (1, 4):
            drops0 = lab.stats()[line]["a_to_b"]["queue_dropped"] if line else 0
            cpu0, t0 = lab.cpu_seconds(), time.monotonic()
            mbit, retr = iperf(lab.ns(src), lab.ns(dst), lab.reach(src, dst), p, seconds)
            cpu = (lab.cpu_seconds() - cpu0) / (time.monotonic() - t0)
            qd = None
            if line:
                qd = lab.stats()[line]["a_to_b"]["queue_dropped"] - drops0
            rows.append((mbit, retr, cpu if line else None, qd))
        return rows
    finally:
        lab.close()


def ceiling(binary, seconds):
    cases = [
        ("veth pair (no bridge)", None),
        ("lab link (veth + bridge)", (["--link", "l=a,b"], None)),
        ("line 0 ms, packet by packet", (["--line", "d=a,b"], "d")),
        ("line 0 ms, offload", (["--line", "d=a,b,offload"], "d")),
        ("line 25 ms, packet by packet", (["--line", "d=a,b,delay_ms=25"], "d")),
        ("line 25 ms, offload", (["--line", "d=a,b,delay_ms=25,offload"], "d")),
        ("line 25 ms, packet by packet, 64 MiB TCP buffers",
         (["--line", "d=a,b,delay_ms=25", *BIG_WINDOWS], "d")),
        ("line 25 ms, offload, 64 MiB TCP buffers",
         (["--line", "d=a,b,delay_ms=25,offload", *BIG_WINDOWS], "d")),
    ]
    print(f"\n### TCP throughput, iperf3 {seconds} s "
          f"(load average before: {os.getloadavg()[0]:.1f})\n")
    print("| path | 1 stream Mbit/s (retr) | 4 streams Mbit/s (retr) "
          "| line CPU, 1 / 4 streams | queue drops, 1 / 4 |")
    print("|---|---|---|---|---|")
    for name, case in cases:
        if case is None:
            rows = plain_veth(binary, seconds)
        else:
            args, line = case
            rows = through_lab(binary, args, "a", "b", seconds, line)
        (m1, r1, c1, q1), (m4, r4, c4, q4) = rows
        cpu = f"{c1:.0%} / {c4:.0%}" if c1 is not None else "-"
        qd = f"{q1} / {q4}" if q1 is not None else "-"
        print(f"| {name} | {m1:.0f} ({r1}) | {m4:.0f} ({r4}) | {cpu} | {qd} |", flush=True)


def connect_times(ns, addr, port, n):
    """TCP connect times from inside ns, measured by a small Python client."""
    code = (
        "import socket,time,sys\n"
        f"for _ in range({n}):\n"
        "    t=time.perf_counter()\n"
        f"    s=socket.create_connection(('{addr}',{port}),timeout=5)\n"
        "    print((time.perf_counter()-t)*1000); s.close(); time.sleep(0.01)\n"
    )
    out = subprocess.run(in_ns(ns, sys.executable, "-c", code),
                         capture_output=True, text=True, check=True).stdout
    return sorted(float(x) for x in out.split())


def summary(ts):
    return (f"{ts[0]:.1f} / {statistics.median(ts):.1f} / "
            f"{ts[int(len(ts) * 0.99) - 1]:.1f} / {ts[-1]:.1f}")


def accuracy(binary, samples):
    print("\n### TCP connect time across a 25 ms one-way line "
          f"(load average before: {os.getloadavg()[0]:.1f})\n")
    print("| condition | min / median / p99 / max ms | line lateness mean / max µs |")
    print("|---|---|---|")
    for mode in ("", ",offload"):
        for bulk_beside in (False, True):
            # A lab per row, so that the lateness maximum is this row's.
            lab = Lab(binary, ["--line", f"d=a,b,delay_ms=25{mode}"])
            helpers = []
            try:
                helpers.append(subprocess.Popen(
                    in_ns(lab.ns("b"), sys.executable, "-c",
                          "import socket\ns=socket.create_server(('0.0.0.0',9000),backlog=512)\n"
                          "while True: s.accept()[0].close()")))
                time.sleep(0.3)
                bulk = None
                if bulk_beside:
                    helpers.append(subprocess.Popen(
                        in_ns(lab.ns("b"), "iperf3", "-s", "-1"), stdout=subprocess.DEVNULL))
                    time.sleep(0.3)
                    bulk = subprocess.Popen(
                        in_ns(lab.ns("a"), "iperf3", "-c", lab.reach("a", "b"),
                              "-t", str(samples // 40 + 4)),
                        stdout=subprocess.DEVNULL)
                    time.sleep(1.5)
                before = lab.stats()["d"]
                ts = connect_times(lab.ns("a"), lab.reach("a", "b"), 9000, samples)
                after = lab.stats()["d"]
                late = []
                for d in ("a_to_b", "b_to_a"):
                    n = after[d]["delivered"] - before[d]["delivered"]
                    late.append((after[d]["late_us_total"] - before[d]["late_us_total"]) / max(n, 1))
                mx = max(after[d]["late_us_max"] for d in ("a_to_b", "b_to_a"))
                label = ("offload" if mode else "packet by packet") + (
                    ", beside iperf3 bulk" if bulk_beside else ", idle")
                print(f"| {label} | {summary(ts)} | {max(late):.0f} / {mx} |", flush=True)
                if bulk:
                    bulk.wait()
            finally:
                # Closing the lab kills what runs inside; reap it.
                lab.close()
                for h in helpers:
                    h.wait()


def loss(binary, share, count):
    lab = Lab(binary, ["--line", f"d=a,b,delay_ms=5,loss={share},seed=11"])
    try:
        addr = lab.reach("a", "b")
        rx = subprocess.Popen(
            in_ns(lab.ns("b"), sys.executable, "-c",
                  "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                  "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4<<20)\n"
                  "s.bind(('0.0.0.0',9001)); s.settimeout(1.0); n=0\n"
                  "print('up',flush=True)\n"
                  "try:\n    while True: s.recv(64); n+=1\nexcept OSError: pass\nprint(n)"),
            stdout=subprocess.PIPE, text=True)
        rx.stdout.readline()
        subprocess.run(in_ns(lab.ns("a"), sys.executable, "-c",
                             "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                             f"for i in range({count}):\n"
                             f"    s.sendto(b'x'*32,('{addr}',9001))\n"
                             "    if i%100==99: time.sleep(0.001)\n"), check=True)
        got = int(rx.stdout.readline())
        rx.wait()
        c = lab.stats()["d"]["a_to_b"]
        print(f"\n### Loss {share:.0%}, {count} UDP datagrams\n")
        print(f"received by the application: {got} of {count} "
              f"→ measured loss {1 - got / count:.3%}; line counters: "
              f"lost {c['lost']}, delivered {c['delivered']}, queue drops {c['queue_dropped']}")
    finally:
        lab.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/httvps-netlab")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--samples", type=int, default=200, help="connects per accuracy row")
    ap.add_argument("--only", choices=["ceiling", "accuracy", "loss"])
    a = ap.parse_args()
    if a.only in (None, "ceiling"):
        ceiling(a.bin, a.seconds)
    if a.only in (None, "accuracy"):
        accuracy(a.bin, a.samples)
    if a.only in (None, "loss"):
        loss(a.bin, 0.01, 100_000)


if __name__ == "__main__":
    main()
