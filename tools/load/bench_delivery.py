#!/usr/bin/env python3
"""Delivery under overload and PostgreSQL restarts, end to end.

    python3 tools/load/bench_delivery.py [overload] [restart] [--no-build]

Both use Logflare batches (`--kind logflare`, 250 events a request, a fresh
`sluice serve` on its own embedded cluster each, see bench.py). Every event
id names its worker and number, so each row can be traced to the request
that carried it.

overload: measures the sustainable rate (closed loop, 4 concurrent), then
offers --factor (10) times that, open loop (`--rate`), for --seconds (60)
with `[limits] max_in_flight_bytes` / `max_in_flight_bytes_total` set low,
sampling the service's RSS (/proc/PID/status) every 100 ms. Afterwards every
request is held against the table: a request answered 200 must have all its
rows, any other answer none.

restart: steady closed-loop load, and meanwhile the embedded PostgreSQL is
restarted (`pg_ctl restart -m fast`), then stopped for --down (5) seconds and
started again. From the moment the server accepts connections again
(pg_isready), how long until a 1-second window of acknowledged events
reaches 90 % of the rate before?
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import LOAD, Service, build, cpu_now  # noqa: E402

PG_BIN = os.environ.get("SLUICE_PG_BINDIR", "/usr/lib/postgresql/15/bin")
EVENTS = 250


def load(service, args, out_prefix=None):
    """Runs sluice-load http --kind logflare; returns its JSON line."""
    cmd = [LOAD, "--threads", "1", "http", "--kind", "logflare", "--events-per-request", str(EVENTS),
           "--url", f"{service.base}/api/logs?source_name=bench", "--database-url", service.db, "--json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode not in (0, 3):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def psql(service, sql):
    out = subprocess.run(["psql", service.db, "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_by_second(samples, t0):
    by = {}
    for at, kib in samples:
        second = int(at - t0) if at >= t0 else -1
        by[second] = max(by.get(second, 0), kib)
    return [(second, round(kib / 1024)) for second, kib in sorted(by.items())]


class RssSampler(threading.Thread):
    def __init__(self, pid, every=0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.running = pid, every, [], True

    def run(self):
        while self.running:
            self.samples.append((time.time(), rss_kib(self.pid)))
            time.sleep(self.every)

    def stop(self):
        self.running = False
        self.join()


def check_requests(service, table, outcomes_path):
    """Holds every request's answer against its rows: 200 → all of its
    EVENTS rows, anything else → none. Returns the tallies."""
    # Worker: the id's 4th group less 0x8000; number: its 5th group.
    rows = psql(service, f"""
        SELECT ('x' || substr(id::text, 20, 4))::bit(16)::int & 16383,
               ('x' || lpad(substr(id::text, 25, 12), 16, '0'))::bit(64)::bigint / {EVENTS}, count(*)
        FROM {table} GROUP BY 1, 2""")
    stored = {}
    for line in rows.split():
        w, r, n = map(int, line.split("|"))
        stored[(w, r)] = n
    tally = {"accepted": 0, "accepted_complete": 0, "accepted_missing_rows": 0,
             "refused": 0, "refused_clean": 0, "refused_with_rows": 0, "rows": sum(stored.values())}
    seen = set()
    with open(outcomes_path) as f:
        for line in f:
            w, r, answer = line.split()
            key = (int(w), int(r))
            seen.add(key)
            n = stored.get(key, 0)
            if answer == "200":
                tally["accepted"] += 1
                tally["accepted_complete" if n == EVENTS else "accepted_missing_rows"] += 1
            else:
                tally["refused"] += 1
                tally["refused_clean" if n == 0 else "refused_with_rows"] += 1
    tally["rows_of_no_request"] = sum(n for k, n in stored.items() if k not in seen)
    return tally


def overload(opts):
    toml = (f"[limits]\nmax_in_flight_bytes = {opts.tenant_cap_mib << 20}\n"
            f"max_in_flight_bytes_total = {opts.total_cap_mib << 20}\n{opts.limits}\n")
    service = Service(toml)
    pid = service.process.pid
    try:
        idle = rss_kib(pid)
        # The sustainable rate: the better of two closed-loop runs (the
        # machine is shared), sampling RSS meanwhile for comparison.
        control = RssSampler(pid)
        control.start()
        runs = [load(service, ["--concurrency", "4", "--duration", f"{opts.measure}s", "--truncate"]) for _ in range(2)]
        control.stop()
        sustained = max(runs, key=lambda r: r["requests_per_s"])
        rate = sustained["requests_per_s"]
        time.sleep(2)
        offered = rate * opts.factor
        outcomes = os.path.join(service.data, "outcomes.txt")
        sampler = RssSampler(pid)
        sampler.start()
        cpu_before = cpu_now(service)
        result = load(service, ["--concurrency", str(opts.concurrency), "--rate", f"{offered:.1f}",
                                "--duration", f"{opts.seconds}s", "--timeout", "120s", "--truncate",
                                "--interval", "1s", "--outcomes", outcomes])
        cpu = {k: round((v - cpu_before[k]) / result["elapsed_s"], 2) for k, v in cpu_now(service).items()}
        time.sleep(3)  # anything still being written lands
        sampler.stop()
        hwm = rss_kib(pid, "VmHWM")
        tally = check_requests(service, result["table"], outcomes)
        tally["rows_in_table_after"] = int(psql(service, f"SELECT count(*) FROM {result['table']}"))
    finally:
        service.stop(remove=not opts.keep)
    peak = max(kib for _, kib in sampler.samples)
    report = {
        "sustained": {k: sustained[k] for k in ("requests_per_s", "events_per_s", "latency_ms", "answers")},
        "offered_requests_per_s": round(offered, 1),
        "sent_requests_per_s": round(result["requests"] / result["elapsed_s"], 1),
        "unsent": result["unsent"],
        "answers": result["answers"],
        "accepted_events_per_s": result["events_per_s"],
        "accepted_latency_ms": result["latency_ms"],
        "caps_mib": {"tenant": opts.tenant_cap_mib, "total": opts.total_cap_mib},
        # Cores used during the overload, by process (of the machine's 2).
        "cores": cpu,
        "rss_mib": {"idle": round(idle / 1024, 1), "peak_sustained": round(max(k for _, k in control.samples) / 1024, 1),
                    "peak_sampled": round(peak / 1024, 1),
                    "peak_growth": round((peak - idle) / 1024, 1), "vm_hwm": round(hwm / 1024, 1)},
        "delivery": tally,
        "timeline": [(b["t"], b["events_per_s"], b["answers"]) for b in result["timeline"]["buckets"]],
        # The largest RSS sample in each second of the run, MiB.
        "rss_by_second": rss_by_second(sampler.samples, result["started_at_unix"]),
    }
    print(json.dumps(report, indent=1))
    print(f"\nsustainable (best of {[r['requests_per_s'] for r in runs]}): {rate:.1f} req/s ({sustained['events_per_s']:,.0f} events/s); offered {offered:.0f} req/s "
          f"for {opts.seconds} s with {opts.concurrency} connections; sent {report['sent_requests_per_s']:.0f} req/s")
    print(f"answers: {result['answers']}; accepted {result['events_per_s']:,.0f} events/s; cores used: {cpu}")
    print(f"RSS: idle {idle / 1024:.0f} MiB, at the sustainable rate {report['rss_mib']['peak_sustained']:.0f} MiB, "
          f"overloaded peak {peak / 1024:.0f} MiB (+{(peak - idle) / 1024:.0f} MiB); "
          f"caps: tenant {opts.tenant_cap_mib} MiB, total {opts.total_cap_mib} MiB")
    print("RSS MiB by second: " + " ".join(f"{s}:{m}" for s, m in report["rss_by_second"]))
    ok = tally["accepted_missing_rows"] == 0 and tally["refused_with_rows"] == 0 and tally["rows_of_no_request"] == 0
    print(f"delivery: {tally} → {'every accepted event committed, no refused one' if ok else 'MISMATCH'}")
    return report


def pg_ctl(service, *args):
    cmd = [os.path.join(PG_BIN, "pg_ctl"), *args]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, cwd="/", stdout=subprocess.DEVNULL)


def wait_accepting(service, timeout=60):
    """Polls until the server accepts connections; returns when it did."""
    end = time.time() + timeout
    while time.time() < end:
        ready = subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(service.port), "-t", "1"])
        if ready.returncode == 0:
            return time.time()
        time.sleep(0.02)
    sys.exit("PostgreSQL did not come back")


def restart_pg(service, down):
    """Stops the embedded server, waits `down` s, starts it as it was.
    Returns (stopped at, accepting again at)."""
    data = service.pgdata
    if down == 0:
        stopping = time.time()
        threading.Thread(target=pg_ctl, args=(service, "restart", "-D", data, "-m", "fast", "-w", "-s"),
                         daemon=True).start()
        time.sleep(0.05)
        return stopping, wait_accepting(service)
    # Start with the options the server runs with now (postmaster.opts).
    words = shlex.split(open(os.path.join(data, "postmaster.opts")).read())[1:]
    i = words.index("-D")
    options = " ".join(shlex.quote(w) for w in words[:i] + words[i + 2:])
    stopping = time.time()
    pg_ctl(service, "stop", "-D", data, "-m", "fast", "-w", "-s")
    time.sleep(down)
    threading.Thread(target=pg_ctl, daemon=True,
                     args=(service, "start", "-D", data, "-l", data + ".log", "-w", "-s", "-o", options)).start()
    return stopping, wait_accepting(service)


def recovery(buckets, interval, before, accepting_at, window=1.0):
    """End of the first `window`-long span starting at or after
    `accepting_at` whose rate reaches 90 % of `before`, less
    `accepting_at`; and that span's rate."""
    per = int(round(window / interval))
    first = next(i for i, b in enumerate(buckets) if b["t"] >= accepting_at - 1e-9)
    for i in range(first, len(buckets) - per + 1):
        rate = sum(b["events_acknowledged"] for b in buckets[i:i + per]) / window
        if rate >= 0.9 * before:
            return buckets[i]["t"] + window - accepting_at, rate
    return None, None


def restart(opts):
    service = Service()
    interval = 0.25
    outcomes = os.path.join(service.data, "outcomes.txt")
    total = opts.warmup + 2 * opts.gap + opts.down + 10
    result = {}
    try:
        runner = threading.Thread(target=lambda: result.update(load(service, [
            "--concurrency", "4", "--duration", f"{total}s", "--timeout", "120s", "--truncate",
            "--interval", f"{interval}s", "--outcomes", outcomes])))
        runner.start()
        time.sleep(0.5)
        started = time.time()
        time.sleep(opts.warmup)
        events = [("pg_ctl restart -m fast", *restart_pg(service, 0))]
        time.sleep(opts.gap)
        events.append((f"stop -m fast, {opts.down} s down, start", *restart_pg(service, opts.down)))
        runner.join()
        if "table" not in result:
            sys.exit("the load did not finish; see above")
        time.sleep(2)
        tally = check_requests(service, result["table"], outcomes)
    finally:
        service.stop(remove=not opts.keep)
    t0 = result["started_at_unix"]
    buckets = result["timeline"]["buckets"]
    report = {"answers": result["answers"], "delivery": tally, "restarts": []}
    print(f"load started {t0 - started + 0.5:+.2f} s from the script's clock (unix {t0:.2f}); "
          f"answers {result['answers']}; service folder {service.data}")
    for what, stopped, accepting in events:
        stopped, accepting = stopped - t0, accepting - t0
        # The rate before: the 10 s before the stop, less the first 2 s of the run.
        span = [b for b in buckets if max(2.0, stopped - 10) <= b["t"] and b["t"] + interval <= stopped]
        before = sum(b["events_acknowledged"] for b in span) / (len(span) * interval)
        took, rate = recovery(buckets, interval, before, accepting)
        first = next((b["t"] for b in buckets if b["t"] + interval > accepting and b["requests_ok"]), None)
        entry = {"what": what, "stopped_at_s": round(stopped, 2), "accepting_at_s": round(accepting, 2),
                 "down_s": round(accepting - stopped, 2), "rate_before": round(before),
                 "recovered_after_s": None if took is None else round(took, 2),
                 "rate_then": None if rate is None else round(rate),
                 # The interval of the first answer after the server is back.
                 "first_ack_after_s": None if first is None else round(max(0.0, first - accepting), 2)}
        report["restarts"].append(entry)
        print(f"{what}: stopped at {stopped:.2f} s, accepting at {accepting:.2f} s; before {before:,.0f} events/s; "
              f"first answers in the {interval} s interval {entry['first_ack_after_s']} s after accepting; "
              f"≥ 90 % again {took if took is None else f'{took:.2f}'} s after accepting ({rate and f'{rate:,.0f}'} events/s)")
        for b in buckets:
            if stopped - 1 <= b["t"] <= accepting + 6:
                print(f"    {b['t']:6.2f} s {b['events_per_s']:>9,.0f} events/s  {b['answers']}")
    ok = tally["accepted_missing_rows"] == 0 and tally["refused_with_rows"] == 0 and tally["rows_of_no_request"] == 0
    print(f"delivery: {tally} → {'every accepted event committed, no refused one' if ok else 'MISMATCH'}")
    return report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("parts", nargs="*", help="overload, restart (default: both)")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--keep", action="store_true", help="keep the service's folder (logs, cluster)")
    parser.add_argument("--factor", type=float, default=10.0, help="overload: times the sustainable rate")
    parser.add_argument("--seconds", type=int, default=60, help="overload: how long")
    parser.add_argument("--measure", type=int, default=10, help="overload: seconds measuring the sustainable rate")
    parser.add_argument("--concurrency", type=int, default=512, help="overload: connections")
    parser.add_argument("--tenant-cap-mib", type=int, default=32, help="overload: [limits] max_in_flight_bytes")
    parser.add_argument("--limits", default="", help="overload: more [limits] lines, e.g. 'max_instances = 8'")
    parser.add_argument("--total-cap-mib", type=int, default=64, help="overload: [limits] max_in_flight_bytes_total")
    parser.add_argument("--warmup", type=float, default=12, help="restart: seconds of load before the first")
    parser.add_argument("--gap", type=float, default=12, help="restart: seconds between the restarts")
    parser.add_argument("--down", type=float, default=5, help="restart: seconds the server stays down the 2nd time")
    opts = parser.parse_args()
    if set(opts.parts) - {"overload", "restart"}:
        parser.error("the parts are overload and restart")
    if not opts.no_build:
        build()
    results = {}
    for part in opts.parts or ["overload", "restart"]:
        print(f"== {part}")
        results[part] = (overload if part == "overload" else restart)(opts)
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
