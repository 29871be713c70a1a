#!/usr/bin/env python3
"""Side-by-side benchmark: Sluice end to end against the direct-SQL baseline,
on the same PostgreSQL, in one run. Prints a Markdown table of ratios.

    python3 tools/load/bench.py [--duration 10] [--out results.json]
    python3 tools/load/bench.py --kind logflare [--runs 3] [--events 250] [--concurrency 4]

It builds release binaries, starts `sluice serve` on its embedded
PostgreSQL (a fresh data folder), and for each scenario runs
`sluice-load baseline` and `sluice-load http` one after the other against
that same database.

`--kind logflare`: Logflare batches (`{"batch": [...]}` to
`/api/logs?source_name=bench`) against the same events normalized natively
and written to the source's table as the host writes them (binary COPY),
and against the same with the host's upsert statement (`unnest`);
`--runs` rounds of the three, rotating which goes first.
"""

import argparse
import json
import os
import resource
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


def load(mode, args, duration, extra=(), truncate=True):
    cmd = [LOAD, "--threads", "1", mode, *args, "--duration", f"{duration}s", *(["--truncate"] if truncate else []),
           "--json", *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["errors"]:
        print(f"  ! {mode}: {result['errors']} errors, e.g. {result['error_samples'][:1]}", file=sys.stderr)
    return result


class Service:
    """A release `sluice serve` on a fresh embedded cluster in a temporary
    folder: `base` (its HTTP address), `db` (the database URL), `pgdata`,
    `process`."""

    def __init__(self, toml=""):
        self.data = data = tempfile.mkdtemp(prefix="sluice-bench-")
        os.chmod(data, 0o755)  # the embedded server may run as another user
        with open(os.path.join(data, "sluice.toml"), "w") as f:
            f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{data}"\n{toml}\n')
        self.process = subprocess.Popen(
            [SLUICE, "serve", "--config", os.path.join(data, "sluice.toml")],
            stdout=subprocess.PIPE, stderr=open(os.path.join(data, "sluice.log"), "w"), text=True,
            env={**os.environ, "SLUICE_LOG": "warn"},
        )
        self.base = port = None
        for line in self.process.stdout:
            if m := re.search(r"embedded PostgreSQL at postgres://\S+@127\.0\.0\.1:(\d+)/", line):
                port = m.group(1)
            if line.startswith("sluice listening on "):
                self.base = line.split()[-1]
                break
        if not (self.base and port):
            sys.exit(f"sluice did not start; see {data}/sluice.log")
        self.port = int(port)
        self.pgdata = os.path.join(data, "postgres")
        password = open(os.path.join(data, "postgres.password")).read().strip()
        self.db = f"postgres://sluice:{password}@127.0.0.1:{port}/sluice"

    def stop(self, remove=True):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        if remove:
            subprocess.run(["rm", "-rf", self.data])


def cpu_seconds(pid, children=False):
    """User + system CPU of a process (with `children`, also of its reaped
    children), from /proc."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_now(service):
    """CPU seconds so far of PostgreSQL (the postmaster, its live and its
    reaped backends), of Sluice, and of this script's children (the load)."""
    postmaster = int(open(os.path.join(service.pgdata, "postmaster.pid")).readline())
    pg = cpu_seconds(postmaster, children=True)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) == postmaster:
                pg += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"postgres": pg, "sluice": cpu_seconds(service.process.pid),
            "load": children.ru_utime + children.ru_stime}


def build():
    subprocess.run(["cargo", "build", "--release", "-p", "sluice", "-p", "sluice-load"], cwd=ROOT, check=True)


def logflare(opts):
    """Logflare batches through Sluice against direct SQL, `opts.runs`
    rounds of three runs: the baseline writing as the host does, Sluice, and
    the baseline with the host's upsert statement."""
    service = Service(opts.toml)
    common = ["--kind", "logflare", "--events-per-request", str(opts.events), "--concurrency", str(opts.concurrency)]
    pairs = []
    modes = ["baseline", "http", "unnest"]
    try:
        for run in range(opts.runs):
            pair = {}
            # Rotate which goes first, so none always meets a warmer table.
            for mode in modes[run % 3:] + modes[:run % 3]:
                args = ["--database-url", service.db]
                if mode == "http":
                    args += ["--url", f"{service.base}/api/logs?source_name=bench"]
                if mode == "unnest":
                    args += ["--method", "unnest"]
                before = cpu_now(service)
                pair[mode] = load("baseline" if mode == "unnest" else mode, args + common, opts.duration)
                after = cpu_now(service)
                # CPU µs per acknowledged event, by process.
                events = max(pair[mode]["events_acknowledged"], 1)
                pair[mode]["cpu_us_per_event"] = {k: round((after[k] - before[k]) / events * 1e6, 2) for k in after}
            pairs.append(pair)
    finally:
        service.stop()
    name = f"Logflare, {opts.events} events/request, {opts.concurrency} concurrent"
    print(f"| {name}: run (first) | baseline events/s | Sluice events/s | ratio | upsert baseline events/s | "
          "ratio to it | Sluice p50 / p99 ms | baseline p50 / p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    first = {"baseline": "baseline", "http": "Sluice", "unnest": "upsert"}
    for i, pair in enumerate(pairs):
        b, s, u = pair["baseline"], pair["http"], pair["unnest"]
        print(f"| {i + 1} ({first[modes[i % 3]]}) | {b['events_per_s']:,.0f} | {s['events_per_s']:,.0f} | "
              f"{s['events_per_s'] / b['events_per_s']:.2f} | {u['events_per_s']:,.0f} | "
              f"{s['events_per_s'] / u['events_per_s']:.2f} | {s['latency_ms']['p50']:.1f} / {s['latency_ms']['p99']:.1f} | "
              f"{b['latency_ms']['p50']:.1f} / {b['latency_ms']['p99']:.1f} |")
    total = {m: sum(p[m]["events_per_s"] for p in pairs) for m in modes}
    print(f"| all | {total['baseline'] / len(pairs):,.0f} | {total['http'] / len(pairs):,.0f} | "
          f"**{total['http'] / total['baseline']:.2f}** | {total['unnest'] / len(pairs):,.0f} | "
          f"**{total['http'] / total['unnest']:.2f}** | | |")
    print("\nCPU µs per event (mean of the runs): " + "; ".join(
        f"{mode}: " + ", ".join(f"{k} {sum(p[mode]['cpu_us_per_event'][k] for p in pairs) / len(pairs):.1f}"
                                for k in ("postgres", "sluice", "load"))
        for mode in modes))
    for pair in pairs:
        for mode, r in pair.items():
            if r["rows_in_table"] != r["events_acknowledged"]:
                print(f"  ! {mode}: {r['rows_in_table']} rows for {r['events_acknowledged']} acknowledged events")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(pairs, f, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--toml", default="", help="extra lines for the service's config file, e.g. '[batch]\\nwriters = 4'")
    parser.add_argument("--kind", choices=["events", "logflare"], default="events")
    parser.add_argument("--runs", type=int, default=3, help="--kind logflare: rounds of runs (baseline, Sluice, upsert baseline)")
    parser.add_argument("--events", type=int, default=250, help="--kind logflare: events a request")
    parser.add_argument("--concurrency", type=int, default=4, help="--kind logflare: concurrent requests")
    opts = parser.parse_args()

    if not opts.no_build:
        build()
    if opts.kind == "logflare":
        return logflare(opts)

    service = Service(opts.toml)
    base, db = service.base, service.db
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
            rows.append((name, "direct SQL as the host writes, same batches", b, s, s["events_per_s"] / b["events_per_s"]))
            if events == 1000:
                # The other ways to write the same rows, for the same batches.
                for method, label in [("unnest", "the upsert statement (INSERT … SELECT FROM unnest … ON CONFLICT)"),
                                      ("copy-upsert", "binary COPY to staging + INSERT … ON CONFLICT")]:
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
        service.stop()

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


if __name__ == "__main__":
    main()
