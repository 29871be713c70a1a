#!/usr/bin/env python3
"""Side-by-side benchmark: Sluice end to end against the direct-SQL baseline,
on the same PostgreSQL, in one run. Prints a Markdown table of ratios.

    python3 tools/load/bench.py [--duration 10] [--out results.json]

It builds release binaries, starts `sluice serve` on its embedded
PostgreSQL (a fresh data folder), and for each scenario runs
`sluice-load baseline` and `sluice-load http` one after the other against
that same database.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
SLUICE = os.path.join(TARGET, "release", "sluice")
LOAD = os.path.join(TARGET, "release", "sluice-load")


def load(mode, args, duration, extra=()):
    cmd = [LOAD, "--threads", "1", mode, *args, "--duration", f"{duration}s", "--truncate", "--json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  ! {mode}: {result['errors']} errors, e.g. {result['error_samples'][:1]}", file=sys.stderr)
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--toml", default="", help="extra lines for the service's config file, e.g. '[batch]\\nwriters = 4'")
    opts = parser.parse_args()

    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-load"], cwd=ROOT, check=True)

    data = tempfile.mkdtemp(prefix="sluice-bench-")
    os.chmod(data, 0o755)  # the embedded server may run as another user
    with open(os.path.join(data, "sluice.toml"), "w") as f:
        f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\n{opts.toml}\n')
    server = subprocess.Popen(
        [SLUICE, "serve", "--config", os.path.join(data, "sluice.toml")],
        stdout=subprocess.PIPE, stderr=open(os.path.join(data, "sluice.log"), "w"), text=True,
        env={**os.environ, "SLUICE_LOG": "warn"},
    )
    base = port = None
    for line in server.stdout:
        if m := re.search(r"embedded PostgreSQL at postgres://\S+@127\.0\.0\.1:(\d+)/", line):
            port = m.group(1)
        if line.startswith("sluice listening on "):
            base = line.split()[-1]
            break
    if not (base and port):
        sys.exit(f"sluice did not start; see {data}/sluice.log")
    password = open(os.path.join(data, "postgres.password")).read().strip()
    db = f"postgres://sluice:{password}@127.0.0.1:{port}/sluice"
    http = ["--url", f"{base}/v1/events", "--database-url", db]
    baseline = ["--database-url", db]

    rows = []
    results = {}
    try:
        for name, events, conc in [("1000 events/request, 4 concurrent", 1000, 4),
                                   ("1 event/request, 64 concurrent", 1, 64)]:
            common = ["--events-per-request", str(events), "--concurrency", str(conc)]
            b = load("baseline", baseline + common, opts.duration)
            # The batched baseline: what direct SQL does with 1,000 rows a transaction.
            bb = b if events == 1000 else results["1000 events/request, 4 concurrent"]["baseline"]
            s = load("http", http + common, opts.duration)
            results[name] = {"baseline": b, "sluice": s}
            rows.append((name, "direct SQL (unnest), same batches", b, s, s["events_per_s"] / b["events_per_s"]))
            if events == 1000:
                # The other ways to write the same rows, for the same batches.
                for method, label in [("copy-upsert", "binary COPY to staging + INSERT … ON CONFLICT"),
                                      ("copy", "raw binary COPY, no conflict handling")]:
                    m = load("baseline", baseline + common + ["--method", method], opts.duration)
                    results[name][method] = m
                    rows.append((name, label, m, s, s["events_per_s"] / m["events_per_s"]))
            if events == 1:
                rows.append((name, "direct SQL, 1,000 rows/txn", bb, s, s["events_per_s"] / bb["events_per_s"]))

        # Ack latency at half of the maximum rate (1-event requests).
        peak = results["1 event/request, 64 concurrent"]["sluice"]["requests_per_s"]
        half = load("http", http + ["--events-per-request", "1", "--concurrency", "64", "--rate", f"{peak / 2:.0f}"],
                    opts.duration)
        results["half rate"] = half
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    print("| scenario | compared with | baseline events/s | Sluice events/s | ratio | Sluice p50 / p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for name, against, b, s, ratio in rows:
        lat = s["latency_ms"]
        print(f"| {name} | {against} | {b['events_per_s']:,.0f} | {s['events_per_s']:,.0f} | "
              f"{ratio:.2f} | {lat['p50']:.2f} / {lat['p99']:.2f} |")
    lat = half["latency_ms"]
    print(f"\nAt half the peak rate ({half['rate']:.0f} req/s of 1 event): ack latency "
          f"p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, {half['errors']} errors.")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(results, f, indent=2)
    subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
