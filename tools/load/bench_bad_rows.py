#!/usr/bin/env python3
"""One bad row in 1,000: how fast do batches with a refused row go, against
clean batches, side by side?

    python3 tools/load/bench_bad_rows.py [--no-build] [--pairs 3] [--seconds 10]

A fresh `sluice serve` (release, its own embedded cluster, see bench.py). The
`events` table gets a CHECK constraint that refuses `eventType = "bad"`
(SQLSTATE 23514). Then, alternating windows of --seconds each, --concurrency
clients POST /v1/events with 1,000 events a request: all good ("clean"), or
with event 500 bad ("one bad"). Every answer is checked: clean → 1,000
inserted; one bad → 999 inserted and event 500 rejected with 23514.
Afterwards the table must hold every good event once, and the dead-letter
table one row per bad request. The figure is good events committed per
second in each kind of window.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlparse

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Service, build  # noqa: E402

EVENTS = 1000
BAD_AT = 500


def body(prefix, n, bad):
    events = [
        {"eventType": "bad" if bad and i == BAD_AT else "bench", "occurredAt": "2026-05-26T14:21:08Z",
         "idempotencyKey": f"{prefix}-{n}-{i}", "payload": {"n": n, "i": i, "note": "x" * 64}}
        for i in range(EVENTS)
    ]
    return json.dumps(events).encode()


def psql(service, sql):
    out = subprocess.run(["psql", service.db, "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def window(service, kind, seconds, concurrency, tag):
    """`concurrency` clients for `seconds`; returns (requests, good events, failures)."""
    url = urlparse(service.base)
    stop = time.monotonic() + seconds
    counts = {"requests": 0, "good": 0, "failures": []}
    lock = threading.Lock()

    def client(worker):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        n = 0
        while time.monotonic() < stop:
            data = body(f"{tag}-{worker}", n, kind == "one bad")
            n += 1
            conn.request("POST", "/v1/events", data, {"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            expected = EVENTS - (kind == "one bad")
            rejected = answer.get("rejected", [])
            ok = (response.status == 200 and answer.get("inserted") == expected
                  and (kind == "clean" and not rejected
                       or [r.get("index") for r in rejected] == [BAD_AT] and "23514" in rejected[0].get("reason", "")))
            with lock:
                counts["requests"] += 1
                if ok:
                    counts["good"] += expected
                else:
                    counts["failures"].append((response.status, answer))
        conn.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=4)
    opts = parser.parse_args()
    if not opts.no_build:
        build()
    service = Service()
    try:
        # The first request creates the table; then the rule the bad event breaks.
        warm, _ = window(service, "clean", 1, 1, "warm")
        psql(service, "ALTER TABLE events ADD CONSTRAINT no_bad CHECK (event_type <> 'bad')")
        good = warm["good"]
        bad_requests = 0
        rows = []
        for pair in range(opts.pairs):
            kinds = ("clean", "one bad") if pair % 2 == 0 else ("one bad", "clean")
            result = {}
            for kind in kinds:
                counts, elapsed = window(service, kind, opts.seconds, opts.concurrency, f"p{pair}{kind[0]}")
                if counts["failures"]:
                    sys.exit(f"{kind}: {len(counts['failures'])} unexpected answers, e.g. {counts['failures'][0]}")
                good += counts["good"]
                bad_requests += counts["requests"] if kind == "one bad" else 0
                result[kind] = counts["good"] / elapsed
            rows.append(result)
            print(f"pair {pair + 1}: clean {result['clean']:,.0f} events/s, one bad {result['one bad']:,.0f} events/s, "
                  f"ratio {result['one bad'] / result['clean']:.2f}", flush=True)
        stored = int(psql(service, "SELECT count(*) FROM events"))
        letters = int(psql(service, "SELECT count(*) FROM sluice_dead_letters"))
        print(f"events stored {stored:,} (good sent {good:,}); dead letters {letters:,} (bad requests {bad_requests:,})")
        if stored != good or letters != bad_requests:
            sys.exit("MISMATCH: a good event is missing or a bad one was not dead-lettered once")
        ratios = sorted(r["one bad"] / r["clean"] for r in rows)
        print(f"median ratio one-bad / clean: {ratios[len(ratios) // 2]:.2f} (all: {', '.join(f'{x:.2f}' for x in ratios)})")
    finally:
        service.stop()


if __name__ == "__main__":
    main()
