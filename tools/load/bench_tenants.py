#!/usr/bin/env python3
"""Tenant benchmarks: start-up with 100 tenants, component swap latency, and
one tenant's throughput while another tenant's component misbehaves.

    python3 tools/load/bench_tenants.py [--duration 10] [--no-build]

Each tenant gets its own component (the built-in events normalizer with a
distinct custom section appended, so each has its own digest and its own
compiled artifact) and its own schema.
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SLUICE = os.path.join(TARGET, "release", "sluice")
LOAD = os.path.join(TARGET, "release", "sluice-load")
ADMIN = "bench-admin-token-0123456789"
TENANTS = 100


def leb(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def variant(wasm, tag):
    """The component with a custom section appended: same code, new digest."""
    name = b"sluice-bench"
    payload = leb(len(name)) + name + tag.encode()
    return wasm + b"\x00" + leb(len(payload)) + payload


def start(data, config):
    path = os.path.join(data, "sluice.toml")
    with open(path, "w") as f:
        f.write(config)
    began = time.monotonic()
    server = subprocess.Popen([SLUICE, "serve", "--config", path], stdout=subprocess.PIPE,
                              stderr=open(os.path.join(data, "sluice.log"), "a"), text=True,
                              env={**os.environ, "SLUICE_LOG": "warn"})
    for line in server.stdout:
        if line.startswith("sluice listening on "):
            return server, line.split()[-1], time.monotonic() - began
    sys.exit(f"sluice did not start; see {data}/sluice.log")


def stop(server):
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=120)


def admin(method, url, body=None):
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"authorization": f"Bearer {ADMIN}"})
    began = time.monotonic()
    with urllib.request.urlopen(request) as response:
        answer = json.loads(response.read())
    return answer, time.monotonic() - began


def load(args, duration):
    out = subprocess.run([LOAD, "--threads", "1", "http", *args, "--duration", f"{duration}s", "--json"],
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--no-build", action="store_true")
    opts = parser.parse_args()
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-load"], cwd=ROOT, check=True)

    # The components the release build embedded.
    import glob
    out = max(glob.glob(os.path.join(TARGET, "release", "build", "sluice-artifacts-*", "out")), key=os.path.getmtime)
    events = open(os.path.join(out, "sluice_events.wasm"), "rb").read()
    misbehave = open(os.path.join(out, "sluice_misbehave.wasm"), "rb").read()

    data = tempfile.mkdtemp(prefix="sluice-bench-tenants-")
    os.chmod(data, 0o755)
    tenants = []
    for i in range(TENANTS):
        path = os.path.join(data, f"t{i}.wasm")
        with open(path, "wb") as f:
            f.write(variant(events, f"tenant-{i}"))
        tenants.append(f'[[tenants]]\nid = "t{i}"\nkeys = ["key-{i:04}-0123456789abcdef"]\n'
                       f'component = "{path}"\ndatabase = {{ schema = "t{i}" }}\n')
    hostile = os.path.join(data, "hostile.wasm")
    with open(hostile, "wb") as f:
        f.write(misbehave)
    tenants.append('[[tenants]]\nid = "hostile"\nkeys = ["hostile-key-0123456789abcdef"]\n'
                   f'component = "{hostile}"\ndatabase = {{ schema = "hostile" }}\n'
                   'limits = { component_deadline_ms = 100 }\n')
    config = f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\nadmin_token = "{ADMIN}"\n' + "".join(tenants)

    server, base, cold = start(data, config)
    stop(server)
    starts = []
    for _ in range(3):
        server, base, warm = start(data, config)
        starts.append(warm)
        if len(starts) < 3:
            stop(server)
    print(f"start with {TENANTS + 1} tenants: first (compile, migrate, initdb) {cold:.2f} s; "
          f"cached: {', '.join(f'{s:.2f}' for s in starts)} s (includes the embedded PostgreSQL's start)")

    # Swaps: components already compiled once (cache hits) and new ones.
    swaps_cached, swaps_new = [], []
    for i in range(10):
        _, took = admin("PUT", f"{base}/admin/tenants/t0/component", variant(events, f"tenant-{1 + i % 2}"))
        swaps_cached.append(took * 1000)
        _, took = admin("PUT", f"{base}/admin/tenants/t0/component", variant(events, f"new-{i}-{time.time()}"))
        swaps_new.append(took * 1000)
    print(f"swap, component compiled before: p50 {statistics.median(swaps_cached):.1f} ms, "
          f"max {max(swaps_cached):.1f} ms; new component (compiles first): p50 {statistics.median(swaps_new):.1f} ms")

    # One tenant's throughput alone, then beside a hostile tenant.
    normal = ["--url", f"{base}/v1/events", "--header", "x-api-key: key-0001-0123456789abcdef",
              "--events-per-request", "100", "--concurrency", "4"]
    alone = load(normal, opts.duration)
    results = {"alone": alone["events_per_s"]}
    for fault in ["trap", "loop", "alloc"]:
        bad = subprocess.Popen([LOAD, "--threads", "1", "http", "--url", f"{base}/v1/events",
                                "--header", "x-api-key: hostile-key-0123456789abcdef",
                                "--header", f"x-misbehave: {fault}", "--events-per-request", "1",
                                "--concurrency", "2", "--duration", f"{opts.duration + 2}s", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        time.sleep(1)
        beside = load(normal, opts.duration)
        hostile_stats = json.loads(bad.communicate()[0].strip().splitlines()[-1])
        results[fault] = beside["events_per_s"]
        print(f"tenant t1 beside a hostile tenant ({fault}, 2 concurrent): {beside['events_per_s']:,.0f} events/s "
              f"= {beside['events_per_s'] / alone['events_per_s']:.2f} of alone ({alone['events_per_s']:,.0f}); "
              f"{beside['errors']} errors; hostile requests failed: {hostile_stats['errors']}")
    stop(server)
    subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
