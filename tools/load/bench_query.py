#!/usr/bin/env python3
"""Query benchmark: small read-only queries at /api/query beside ingest.

    python3 tools/load/bench_query.py [--duration 10] [--rate 1000] [--no-build]

Target: 1,000 small queries/s sustained without starving ingest. It starts
`sluice serve` on a fresh embedded PostgreSQL with one tenant that has an
ingest key and a query token, seeds its events table, and then, in one run:

  1. queries alone, paced at --rate (latency), and back to back (headroom);
  2. ingest alone and ingest while --rate queries/s run, --pairs times,
     alternating, so that the machine's drift shows as the spread between
     the pairs (the median ratio is the figure to quote).

Ingest is `sluice-load http` with 1,000 events a request on 4 connections
(bench.py's first scenario); the queries are `sluice-load query`'s default,
the ten latest events of a type (index range scan, parameter $1).
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
KEY = "bench-ingest-key-0123456789abcdef"
TOKEN = "bench-query-token-0123456789abcdef"


def load_cmd(mode, args, duration):
    return [LOAD, "--threads", "1", mode, *args, "--duration", f"{duration}s", "--json"]


def result(out, cmd):
    lines = out.strip().splitlines()
    if not lines:
        sys.exit(f"{' '.join(cmd)} printed nothing")
    r = json.loads(lines[-1])
    if r["errors"]:
        print(f"  ! {r['mode']}: {r['errors']} errors, e.g. {r['error_samples'][:1]}", file=sys.stderr)
    return r


def run(mode, args, duration):
    cmd = load_cmd(mode, args, duration)
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return result(out.stdout, cmd)


def together(ingest_args, query_args, duration):
    """Ingest for `duration` while queries run from 1 s before to 1 s after."""
    qcmd = load_cmd("query", query_args, duration + 2)
    queries = subprocess.Popen(qcmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    ingest = run("http", ingest_args, duration)
    out, err = queries.communicate()
    if queries.returncode not in (0, 3):
        sys.exit(f"{' '.join(qcmd)} failed:\n{err}")
    return ingest, result(out, qcmd)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--query-concurrency", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--toml", default="", help="extra lines for the service's config file (before the tenant)")
    opts = parser.parse_args()

    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-load"], cwd=ROOT, check=True)

    data = tempfile.mkdtemp(prefix="sluice-bench-query-")
    os.chmod(data, 0o755)  # the embedded server may run as another user
    config = (f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\n{opts.toml}\n'
              f'[[tenants]]\nid = "bench"\nkeys = ["{KEY}"]\nquery_tokens = ["{TOKEN}"]\n'
              f'database = {{ schema = "bench" }}\n')
    with open(os.path.join(data, "sluice.toml"), "w") as f:
        f.write(config)
    server = subprocess.Popen(
        [SLUICE, "serve", "--config", os.path.join(data, "sluice.toml")],
        stdout=subprocess.PIPE, stderr=open(os.path.join(data, "sluice.log"), "w"), text=True,
        env={**os.environ, "SLUICE_LOG": "warn"},
    )
    base = None
    for line in server.stdout:
        if line.startswith("sluice listening on "):
            base = line.split()[-1]
            break
    if not base:
        sys.exit(f"sluice did not start; see {data}/sluice.log")

    ingest = ["--url", f"{base}/v1/events", "--header", f"x-api-key: {KEY}",
              "--events-per-request", "1000", "--concurrency", "4"]
    query = ["--url", f"{base}/api/query", "--header", f"authorization: Bearer {TOKEN}"]
    paced = query + ["--rate", f"{opts.rate:g}", "--concurrency", str(opts.query_concurrency)]
    results = {}
    try:
        run("http", ingest, 3)  # seed: ~100 k events, so queries read real rows
        results["queries alone, paced"] = run("query", paced, opts.duration)
        results["queries alone, back to back"] = run("query", query + ["--concurrency", "16"], opts.duration)
        for n in range(1, opts.pairs + 1):
            results[f"ingest alone #{n}"] = run("http", ingest, opts.duration)
            i, q = together(ingest, paced, opts.duration)
            results[f"ingest with queries #{n}"] = i
            results[f"queries with ingest #{n}"] = q
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)

    def lat(r):
        l = r["latency_ms"]
        return f"{l['p50']:.2f} / {l['p99']:.2f} / {l['max']:.1f}"

    print(f"| run | ingest events/s | queries/s (target {opts.rate:g}) | query p50 / p99 / max ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for name in ("queries alone, paced", "queries alone, back to back"):
        r = results[name]
        print(f"| {name} | | {r['requests_per_s']:,.0f} | {lat(r)} | {r['errors']} |")
    ratios = []
    for n in range(1, opts.pairs + 1):
        a = results[f"ingest alone #{n}"]
        i = results[f"ingest with queries #{n}"]
        q = results[f"queries with ingest #{n}"]
        print(f"| ingest alone #{n} | {a['events_per_s']:,.0f} | | | {a['errors']} |")
        print(f"| ingest + queries #{n} | {i['events_per_s']:,.0f} (**{i['events_per_s'] / a['events_per_s']:.2f}** "
              f"of alone) | {q['requests_per_s']:,.0f} | {lat(q)} | {i['errors']} + {q['errors']} |")
        ratios.append(i["events_per_s"] / a["events_per_s"])
    ratios.sort()
    print(f"\nIngest beside {opts.rate:g} queries/s: median {ratios[len(ratios) // 2]:.2f} of ingest alone "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}).")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(results, f, indent=2)
    subprocess.run(["rm", "-rf", data])


if __name__ == "__main__":
    main()
