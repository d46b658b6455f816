#!/usr/bin/env python3
"""System calls and CPU of our data-plane processes, per GB and per tunnel.

Usage: bench/io_calls.py [--bulk] [--setup] [--streams N] [--reverse]

Starts the plane as bench/suite.py does (release binaries from
BENCH_BIN_DIR or target/release: control plane on SQLite, one node, one
gateway, our client) and, for our client with and without `--mux`:

  --bulk:  one iperf3 upload (BENCH_SECONDS, 1 stream unless --streams;
           a download with --reverse) through a port forward; per GB
           carried, the read and write system calls and the CPU seconds
           of the client, the gateway and the node;
  --setup: `tunnel_load setup` (8 s, 16 workers); per tunnel, the reads,
           page faults, brk/madvise calls and CPU microseconds of each.

System calls are counted by `perf stat` on the syscalls tracepoints (root).
Counting slows every system call a little, so compare the rates of two
builds measured this way, not with the suite's rates. Both sections by
default.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import suite  # noqa: E402

READS = ["syscalls:sys_enter_read", "syscalls:sys_enter_recvfrom", "syscalls:sys_enter_readv"]
WRITES = ["syscalls:sys_enter_write", "syscalls:sys_enter_writev", "syscalls:sys_enter_sendto"]
MEMORY = ["page-faults", "syscalls:sys_enter_brk", "syscalls:sys_enter_madvise"]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counted:
    """`perf stat` on each of `procs` ({role: pid}) for `events`."""

    def __init__(self, procs, events):
        self.procs = procs
        self.perf = {
            role: subprocess.Popen(
                ["perf", "stat", "-x,", "-e", ",".join(events), "-p", str(pid)],
                stderr=subprocess.PIPE,
                text=True,
            )
            for role, pid in procs.items()
        }
        time.sleep(0.3)
        self.cpu = {role: cpu_seconds(pid) for role, pid in procs.items()}

    def stop(self):
        """{role: ({event: count}, cpu seconds)}."""
        cpu = {role: cpu_seconds(pid) - self.cpu[role] for role, pid in self.procs.items()}
        out = {}
        for role, p in self.perf.items():
            p.send_signal(2)
            err = p.communicate(timeout=30)[1]
            counts = {}
            for line in err.strip().splitlines():
                parts = line.split(",")
                if len(parts) > 2 and parts[0].isdigit():
                    counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = int(parts[0])
            out[role] = (counts, cpu[role])
        return out


def total(counts, events):
    return sum(counts.get(e.split(":")[-1].replace("sys_enter_", ""), 0) for e in events)


def bulk(plane, streams, reverse):
    iport = suite.free_port()
    suite.spawn("iperf3-server", ["iperf3", "-s", "-p", str(iport)])
    suite.wait_port(iport)
    for mux in (False, True):
        c, port = plane.client("io-bulk-mux" if mux else "io-bulk", forward=f"127.0.0.1:{iport}", mux=mux)
        time.sleep(1)
        procs = {"client": c.pid, "gateway": plane.gateway.pid, "node": plane.node.pid}
        counted = Counted(procs, READS + WRITES)
        mbit = suite.iperf(port, streams, reverse)
        seen = counted.stop()
        gb = mbit * suite.SECS / 8 / 1000
        way = "download" if reverse else "upload"
        print(f"bulk {way}, {'--mux' if mux else 'WebSocket per tunnel'}: {mbit:,.0f} Mbit/s, {gb:.2f} GB", flush=True)
        for role, (counts, cpu) in seen.items():
            r, w = total(counts, READS), total(counts, WRITES)
            print(f"  {role:8s} per GB: {r / gb:9,.0f} reads {w / gb:9,.0f} writes {cpu / gb:6.3f} CPU s", flush=True)
        suite.stop(c)


def setup(plane):
    for mux in (False, True):
        c, port = plane.client("io-setup-mux" if mux else "io-setup", mux=mux)
        suite.load("setup", f"127.0.0.1:{port}", 1, 4)
        procs = {"client": c.pid, "gateway": plane.gateway.pid, "node": plane.node.pid}
        counted = Counted(procs, READS + MEMORY)
        res = suite.load("setup", f"127.0.0.1:{port}", 8, 16)
        seen = counted.stop()
        n = res["rate"] * 8
        print(f"setup, {'--mux' if mux else 'WebSocket per tunnel'}: {res['rate']:,.0f}/s, {n:,.0f} tunnels", flush=True)
        for role, (counts, cpu) in seen.items():
            mem = ", ".join(f"{e.split(':')[-1].replace('sys_enter_', '')} {total(counts, [e]) / n:.2f}" for e in MEMORY)
            print(f"  {role:8s} per tunnel: {total(counts, READS) / n:5.2f} reads, {mem}, {1e6 * cpu / n:4.0f} CPU us", flush=True)
        suite.stop(c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bulk", action="store_true")
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--reverse", action="store_true", help="bulk: a download, not an upload")
    a = ap.parse_args()
    both = not (a.bulk or a.setup)
    plane = suite.Plane()
    try:
        if a.bulk or both:
            bulk(plane, a.streams, a.reverse)
        if a.setup or both:
            setup(plane)
    finally:
        for p in reversed(suite.PROCS):
            suite.stop(p)


if __name__ == "__main__":
    main()
