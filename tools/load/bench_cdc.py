#!/usr/bin/env python3
"""Change streams: Sluice against pg_recvlogical on the same WAL, the lag at
half that rate, and memory during a 1,000,000-row transaction.

    python3 tools/load/bench_cdc.py [--changes 1000000] [--tx-size 100] [--handler audit|aggregate] [--no-build]

It starts a PostgreSQL cluster of its own (wal_level=logical, fsync and
synchronous_commit on) with a source database `src` (table `orders`,
publication `bench`) and a destination database `dest`, and builds the
release `sluice`.

throughput: two slots are made at the same position, then --changes row
changes are committed in transactions of --tx-size (inserts, then updates
and deletes of some of them), the last one a marker row. Then, one after
the other over that same WAL:
  - `pg_recvlogical --start --endpos` (pgoutput, proto_version 1, the same
    publication) reads it to /dev/null: decoding and transport only;
  - `sluice serve` streams its slot into the builtin audit handler, every
    change committed into `dest.cdc_audit` with its checkpoint, from the
    moment it owns the slot until the marker row is committed;
  - for scale, the same audit rows into a table of the same shape by one
    INSERT ... SELECT, and by a raw COPY of their text: the destination's
    share alone.

It also reports the CPU seconds the cluster's walsenders and the
destination's backends spent while Sluice ran.

--handler aggregate: the same, through `builtin:aggregate` instead (orders
has `customer_id` and REPLICA IDENTITY FULL; the handler's effect is one
accumulated row per customer, so the destination stores few rows, though
each group still updates most of its customers). Sluice is timed until the marker's
customer is counted, and the run fails unless the aggregate equals the
source's GROUP BY. No lag or memory part.

lag: Sluice is left running, caught up; pgbench commits transactions of
--tx-size inserts at half the rate Sluice reached, for --lag-seconds. A
trigger on the audit table stamps each row with clock_timestamp() when it
is written; the lag of a transaction is that minus its commit time at the
source (same clock), at most per transaction.

memory: one transaction of --big rows (streamed by the server before its
commit: logical_decoding_work_mem is 64 MB), Sluice's RSS sampled every
50 ms from /proc until the transaction is applied, against the baseline
before it.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import ROOT, SLUICE  # noqa: E402

PG_BIN = os.environ.get("SLUICE_PG_BINDIR", "/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster (run as `postgres` when this runs as root)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-bench-cdc-")
        self.port = free_port()
        self.as_user = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.dir, "data")
        subprocess.run([*self.as_user, f"{PG_BIN}/initdb", "-D", data, "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True)
        settings = {
            "port": self.port, "listen_addresses": "127.0.0.1", "unix_socket_directories": self.dir,
            "wal_level": "logical", "max_wal_senders": 10, "max_replication_slots": 10,
            "shared_buffers": "512MB", "max_wal_size": "4GB", "checkpoint_timeout": "30min",
        }
        options = " ".join(f"-c {k}={v}" for k, v in settings.items())
        subprocess.run([*self.as_user, f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(self.dir, "pg.log"),
                        "-o", options, "-w", "start"], check=True, capture_output=True)
        self.data = data
        self.url = lambda db: f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def create_databases(self):
        for db in ("src", "dest"):
            self.psql("postgres", f"CREATE DATABASE {db}")

    def psql(self, db, sql, check=True):
        out = subprocess.run(["psql", self.url(db), "-AtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            sys.exit(f"psql failed: {sql[:200]}\n{out.stderr}")
        return out.stdout.strip()

    def stop(self):
        subprocess.run([*self.as_user, f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Sluice:
    def __init__(self, cluster, extra="", handler="audit"):
        self.dir = tempfile.mkdtemp(prefix="sluice-bench-cdc-host-")
        toml = os.path.join(self.dir, "sluice.toml")
        with open(toml, "w") as f:
            f.write(f'listen = "127.0.0.1:0"\ndata_dir = "{self.dir}"\n\n'
                    f'[[cdc]]\nname = "bench"\nhost = "127.0.0.1"\nport = {cluster.port}\ndatabase = "src"\n'
                    f'user = "postgres"\ntables = ["orders"]\nslotName = "sluice_bench"\n'
                    f'publicationName = "bench"\nsslMode = "disable"\ncomponent = "builtin:{handler}"\n{extra}\n')
        self.log = os.path.join(self.dir, "sluice.log")
        self.process = subprocess.Popen(
            [SLUICE, "serve", "--config", toml], stdout=subprocess.DEVNULL, stderr=open(self.log, "w"),
            env={**os.environ, "SLUICE_LOG": "info", "SLUICE_DATABASE_URL": cluster.url("dest")})

    def wait_for(self, text, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in open(self.log).read():
                return time.monotonic()
            if self.process.poll() is not None:
                sys.exit(f"sluice exited; see {self.log}")
            time.sleep(0.005)
        sys.exit(f"no {text!r} in {self.log}")

    def rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(cluster):
    """CPU seconds so far of the cluster's processes, by role: the
    walsenders (decoding), the backends of `dest` (the writes), the rest."""
    postmaster = int(open(os.path.join(cluster.data, "postmaster.pid")).readline())
    roles = {"walsender": 0.0, "dest": 0.0, "other": 0.0}
    for pid in os.listdir("/proc"):
        try:
            if not pid.isdigit() or int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1]) != postmaster:
                continue
            title = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            role = "walsender" if "walsender" in title else "dest" if " dest " in title else "other"
            roles[role] += cpu_seconds(int(pid))
        except (OSError, ValueError):
            continue
    return roles


class Session:
    """One psql session kept open: polling through it costs no new
    connection (a backend fork) each time."""

    def __init__(self, url):
        self.process = subprocess.Popen(["psql", url, "-AtX", "-v", "ON_ERROR_STOP=1"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, bufsize=1)

    def query(self, sql):
        self.process.stdin.write(f"{sql};\n\\echo __done__\n")
        self.process.stdin.flush()
        lines = []
        for line in self.process.stdout:
            if line.strip() == "__done__":
                return "\n".join(lines)
            lines.append(line.strip())
        sys.exit(f"psql ended while polling: {sql}")

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def wait_marker(cluster, marker, timeout=1800, handler="audit"):
    """Until the audit row of order `marker` (with the aggregate: the
    marker's customer) is committed in dest."""
    deadline = time.time() + timeout
    sql = f"SELECT count(*) FROM cdc_audit WHERE element_id = 'orders:{marker}'"
    if handler == "aggregate":
        sql = "SELECT count(*) FROM customer_order_totals WHERE customer_id = 'marker' AND order_count = 1"
    session = Session(cluster.url("dest"))
    try:
        while time.time() < deadline:
            if session.query(sql) == "1":
                return time.monotonic()
            time.sleep(0.02)
    finally:
        session.close()
    sys.exit(f"order {marker} never audited")


def generate(cluster, changes, tx_size, customer="customer"):
    """`changes` row changes in transactions of `tx_size`: 80 % inserts,
    then 15 % updates and 5 % deletes of those rows; then a marker row."""
    inserts = changes * 80 // 100
    updates = changes * 15 // 100
    deletes = changes - inserts - updates - 1
    cluster.psql("src", f"""
        DO $$
        BEGIN
          FOR i IN 0..{inserts // tx_size - 1} LOOP
            INSERT INTO orders (id, {customer}, amount, status, note)
              SELECT g, 'cust_' || (g % 5000), (g % 10000) / 100.0, 'new', md5(g::text)
              FROM generate_series(i * {tx_size} + 1, (i + 1) * {tx_size}) g;
            COMMIT;
          END LOOP;
          FOR i IN 0..{updates // tx_size - 1} LOOP
            UPDATE orders SET status = 'paid', amount = amount + 1
              WHERE id BETWEEN i * {tx_size} + 1 AND (i + 1) * {tx_size};
            COMMIT;
          END LOOP;
          FOR i IN 0..{deletes // tx_size - 1} LOOP
            DELETE FROM orders WHERE id BETWEEN {inserts} - (i + 1) * {tx_size} + 1 AND {inserts} - i * {tx_size};
            COMMIT;
          END LOOP;
        END $$""")
    cluster.psql("src", f"INSERT INTO orders (id, {customer}, amount, status, note) VALUES (-1, 'marker', 0, 'end', '')")
    expected = (inserts // tx_size + updates // tx_size + deletes // tx_size) * tx_size + 1
    return expected


def throughput(cluster, opts):
    aggregate = opts.handler == "aggregate"
    customer = "customer_id" if aggregate else "customer"
    cluster.psql("src", f"CREATE TABLE orders (id bigint PRIMARY KEY, {customer} text, amount numeric(12,2), "
                        "status text, note text, created_at timestamptz DEFAULT clock_timestamp());"
                        "CREATE PUBLICATION bench FOR TABLE orders;")
    if aggregate:
        # The handler needs the old row of updates and deletes.
        cluster.psql("src", "ALTER TABLE orders REPLICA IDENTITY FULL")
    # Both slots start at the same position (a slot is made outside a writing transaction).
    for slot in ("recv", "sluice_bench"):
        cluster.psql("src", f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    started = time.monotonic()
    changes = generate(cluster, opts.changes, opts.tx_size, customer)
    end = cluster.psql("src", "SELECT pg_current_wal_lsn()")
    wal = int(cluster.psql("src", f"SELECT '{end}'::pg_lsn - confirmed_flush_lsn FROM pg_replication_slots "
                                  "WHERE slot_name = 'recv'"))
    print(f"generated {changes} changes ({wal / 2**20:.0f} MiB of WAL) in {time.monotonic() - started:.1f} s",
          file=sys.stderr)

    t0 = time.monotonic()
    recv = subprocess.Popen([f"{PG_BIN}/pg_recvlogical", "-d", f"host=127.0.0.1 port={cluster.port} dbname=src "
                             "user=postgres", "--slot", "recv", "--start", "--endpos", end, "--no-loop",
                             "-o", "proto_version=1", "-o", "publication_names=bench", "-f", "/dev/null"])
    recv.wait()
    recv_seconds = time.monotonic() - t0
    if recv.returncode != 0:
        sys.exit("pg_recvlogical failed")

    sluice = Sluice(cluster, opts.toml, opts.handler)
    t0 = sluice.wait_for("owns the slot")
    server_before = server_cpu(cluster)
    t1 = wait_marker(cluster, -1, handler=opts.handler)
    server_after = server_cpu(cluster)
    sluice_seconds = t1 - t0
    cpu = cpu_seconds(sluice.process.pid)
    result = {
        "handler": opts.handler, "changes": changes, "tx_size": opts.tx_size, "wal_mib": round(wal / 2**20),
        "pg_recvlogical_s": round(recv_seconds, 2), "pg_recvlogical_changes_per_s": round(changes / recv_seconds),
        "sluice_s": round(sluice_seconds, 2), "sluice_changes_per_s": round(changes / sluice_seconds),
        "ratio": round(recv_seconds / sluice_seconds, 3), "sluice_cpu_s": round(cpu, 1),
        # While Sluice ran: the walsender decoding for it, the destination's backends.
        **{f"pg_{role}_cpu_s": round(server_after[role] - server_before[role], 1) for role in server_after},
    }
    if aggregate:
        totals = "SELECT md5(string_agg(format('%s|%s|%s', customer_id, n, total), ',' ORDER BY customer_id)) FROM ({}) t"
        source = cluster.psql("src", totals.format(
            "SELECT customer_id, count(*) AS n, sum(amount) AS total FROM orders GROUP BY 1"))
        derived = cluster.psql("dest", totals.format(
            "SELECT customer_id, order_count AS n, total FROM customer_order_totals WHERE order_count > 0"))
        if source != derived:
            sys.exit("the aggregate differs from the source's GROUP BY")
        return sluice, result
    audited = int(cluster.psql("dest", "SELECT count(*) FROM cdc_audit"))
    if audited != changes:
        sys.exit(f"{audited} audit rows for {changes} changes")
    # The destination alone, for scale: the same rows into a table of the
    # same shape (indexes included), by one INSERT ... SELECT (no parsing),
    # and by a raw COPY of their text (what any client must send: the jsonb
    # images parsed again).
    rows_file = os.path.join(cluster.dir, "audit.copy")
    cluster.psql("dest", f"COPY cdc_audit TO '{rows_file}'")
    for name, load in (("insert_select", "INSERT INTO audit_copy SELECT * FROM cdc_audit"),
                       ("copy", f"COPY audit_copy FROM '{rows_file}'")):
        cluster.psql("dest", "CREATE TABLE audit_copy (LIKE cdc_audit INCLUDING ALL)")
        t0 = time.monotonic()
        cluster.psql("dest", load)
        seconds = time.monotonic() - t0
        cluster.psql("dest", "DROP TABLE audit_copy")
        result.update({f"{name}_s": round(seconds, 2), f"{name}_rows_per_s": round(changes / seconds),
                       f"{name}_ratio": round(recv_seconds / seconds, 3)})
    os.remove(rows_file)
    return sluice, result


def lag(cluster, sluice, rate, opts):
    """pgbench at `rate` changes/s; per transaction: audit row written − commit time."""
    cluster.psql("dest", """
        CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN NEW.recorded_at := clock_timestamp(); RETURN NEW; END $$;
        CREATE TRIGGER stamp BEFORE INSERT ON cdc_audit FOR EACH ROW EXECUTE FUNCTION stamp();""")
    cluster.psql("src", "CREATE SEQUENCE lag_ids START 10000000000")
    script = os.path.join(sluice.dir, "lag.sql")
    with open(script, "w") as f:
        f.write(f"INSERT INTO orders (id, customer, amount, status, note) SELECT nextval('lag_ids'), 'lag', 1, "
                f"'new', 'x' FROM generate_series(1, {opts.tx_size});\n")
    tps = rate / opts.tx_size
    since = cluster.psql("dest", "SELECT now()")
    subprocess.run([f"{PG_BIN}/pgbench", "-n", "-c", "2", "-j", "1", "-R", f"{tps:.1f}", "-T", str(opts.lag_seconds),
                    "-f", script, "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "src"],
                   check=True, capture_output=True)
    time.sleep(2)
    row = cluster.psql("dest", f"""
        WITH t AS (SELECT max(extract(epoch FROM recorded_at - commit_time)) * 1000 AS ms
                   FROM cdc_audit WHERE table_name = 'orders' AND recorded_at > '{since}' GROUP BY commit_lsn)
        SELECT count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
               round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1)
        FROM t""")
    n, p50, p99, worst = row.split("|")
    cluster.psql("dest", "DROP TRIGGER stamp ON cdc_audit")
    return {"rate_changes_per_s": round(rate), "transactions": int(n), "lag_p50_ms": float(p50),
            "lag_p99_ms": float(p99), "lag_max_ms": float(worst)}


def memory(cluster, sluice, opts):
    """RSS while one transaction of `opts.big` rows is applied."""
    baseline = max(sluice.rss_kib() for _ in range(20) if time.sleep(0.05) is None)
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], sluice.rss_kib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t0 = time.monotonic()
    cluster.psql("src", f"""
        BEGIN;
        INSERT INTO orders (id, customer, amount, status, note)
          SELECT 20000000000 + g, 'big', 1, 'new', md5(g::text) FROM generate_series(1, {opts.big - 1}) g;
        INSERT INTO orders (id, customer, amount, status, note) VALUES (-2, 'marker', 0, 'end', '');
        COMMIT;""")
    committed = time.monotonic() - t0
    applied = wait_marker(cluster, -2) - t0
    done.set()
    sampler.join()
    after = sluice.rss_kib()
    return {"rows": opts.big, "source_commit_s": round(committed, 1), "applied_s": round(applied, 1),
            "rss_baseline_mib": round(baseline / 1024), "rss_peak_mib": round(peak[0] / 1024),
            "rss_after_mib": round(after / 1024)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--tx-size", type=int, default=100)
    parser.add_argument("--lag-seconds", type=int, default=30)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--toml", default="", help="more keys for the [[cdc]] table, e.g. 'memory_changes = 10000'")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--skip", action="append", default=[], choices=["lag", "memory"])
    parser.add_argument("--handler", choices=["audit", "aggregate"], default="audit")
    opts = parser.parse_args()
    if opts.handler == "aggregate":
        opts.skip += ["lag", "memory"]
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "sluice"], cwd=ROOT, check=True)
    cluster = Cluster()
    sluice = None
    try:
        cluster.create_databases()
        sluice, result = throughput(cluster, opts)
        print(json.dumps({"throughput": result}), flush=True)
        if "lag" not in opts.skip:
            print(json.dumps({"lag": lag(cluster, sluice, result["sluice_changes_per_s"] / 2, opts)}), flush=True)
        if "memory" not in opts.skip:
            print(json.dumps({"memory": memory(cluster, sluice, opts)}), flush=True)
    finally:
        if sluice:
            sluice.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
