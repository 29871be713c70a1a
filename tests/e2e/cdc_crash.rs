//! Change streams under failure: hosts killed at random moments during a
//! concurrent workload, a standby taking over, an idle slot that must not
//! hold WAL, and one transaction too large for memory.
//!
//! The ground truth is a trigger on the source tables that logs every row
//! change (xid, op, element id) into an unpublished table, in the same
//! transaction; and a trigger on the destination that counts every attempt
//! to write an audit row in a committed transaction, which the audit
//! table's primary key would otherwise hide.

use crate::support::{Sluice, TestDb, cdc_toml};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

/// Whether the slot is being streamed. (A slot being created is active
/// too, but has no confirmed position until its consistent point.)
async fn slot_active(client: &tokio_postgres::Client, db: &TestDb) -> bool {
    client
        .query_opt(
            "SELECT active AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("s_{}", db.name)],
        )
        .await
        .unwrap()
        .is_some_and(|row| row.get::<_, bool>(0))
}

async fn wait_for_slot(client: &tokio_postgres::Client, db: &TestDb, sluice: &Sluice) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !slot_active(client, db).await {
        assert!(Instant::now() < deadline, "the slot was never streamed; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

fn kill(sluice: &mut Sluice) {
    sluice.child.kill().unwrap();
    sluice.child.wait().unwrap();
}

/// A small xorshift generator: the kill moments and the workload's keys.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64;
        eprintln!("rng seed {seed}");
        Rng(seed | 1)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const ACCOUNTS: i32 = 200;
const TELLERS: i32 = 10;

/// Source tables with rows already in them (before the slot: not
/// streamed), and the change log the source triggers fill.
async fn create_workload_tables(client: &tokio_postgres::Client) {
    client
        .batch_execute(&format!(
            "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
             CREATE TABLE tellers (id int PRIMARY KEY, total bigint NOT NULL);
             CREATE TABLE history (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account int, delta int,
                                   at timestamptz DEFAULT clock_timestamp());
             INSERT INTO accounts SELECT g, 0, '' FROM generate_series(1, {ACCOUNTS}) g;
             INSERT INTO tellers SELECT g, 0 FROM generate_series(1, {TELLERS}) g;
             CREATE TABLE changelog (id bigserial PRIMARY KEY,
                                     xid bigint NOT NULL DEFAULT (pg_current_xact_id()::text::bigint % 4294967296),
                                     op text NOT NULL, element_id text NOT NULL);
             CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO changelog (op, element_id) VALUES
                 (lower(TG_OP), TG_TABLE_NAME || ':' || CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END);
               RETURN NULL;
             END $$;
             CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION log_change();
             CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON tellers FOR EACH ROW EXECUTE FUNCTION log_change();
             CREATE TRIGGER log AFTER INSERT OR UPDATE OR DELETE ON history FOR EACH ROW EXECUTE FUNCTION log_change();"
        ))
        .await
        .unwrap();
}

/// Counts every audit row written by a committed transaction, including
/// the ones `ON CONFLICT DO NOTHING` drops: a transaction applied twice
/// shows as a count of 2. (BEFORE INSERT row triggers fire before the
/// conflict check.)
async fn count_audit_attempts(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            "CREATE TABLE audit_attempts (commit_lsn bigint, change_index bigint, n int NOT NULL,
                                          PRIMARY KEY (commit_lsn, change_index));
             CREATE FUNCTION count_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO audit_attempts VALUES (NEW.commit_lsn, NEW.change_index, 1)
                 ON CONFLICT (commit_lsn, change_index) DO UPDATE SET n = audit_attempts.n + 1;
               RETURN NEW;
             END $$;
             CREATE TRIGGER attempts BEFORE INSERT ON cdc_audit FOR EACH ROW EXECUTE FUNCTION count_attempt();",
        )
        .await
        .unwrap();
}

/// Concurrent writers of multi-statement transactions (pgbench's shape:
/// a history insert, an account and a teller update; sometimes a delete
/// of an older history row; sometimes an update of 40 accounts, larger
/// than `memory_changes`) until `stop`. Returns the committed count.
fn start_workload(
    url: &str,
    writers: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..writers)
        .map(|w| {
            let (url, stop) = (url.to_owned(), stop.clone());
            tokio::spawn(async move {
                let mut client = crate::support::connect(&url).await;
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x2545_F491));
                let mut mine: Vec<i64> = Vec::new();
                let mut committed = 0;
                while !stop.load(Ordering::Relaxed) {
                    let account = 1 + rng.below(ACCOUNTS as u64) as i32;
                    let teller = 1 + rng.below(TELLERS as u64) as i32;
                    let delta = rng.below(1000) as i32 - 500;
                    let roll = rng.below(100);
                    let tx = client.transaction().await.unwrap();
                    let result = async {
                        let id: i64 = tx
                            .query_one(
                                "INSERT INTO history (account, delta) VALUES ($1, $2) RETURNING id",
                                &[&account, &delta],
                            )
                            .await?
                            .get(0);
                        tx.execute(
                            "UPDATE accounts SET balance = balance + $2::int WHERE id = $1",
                            &[&account, &delta],
                        )
                        .await?;
                        tx.execute("UPDATE tellers SET total = total + $2::int WHERE id = $1", &[&teller, &delta])
                            .await?;
                        let mut deleted = None;
                        if roll < 30 && !mine.is_empty() {
                            let i = rng.below(mine.len() as u64) as usize;
                            tx.execute("DELETE FROM history WHERE id = $1", &[&mine[i]]).await?;
                            deleted = Some(i);
                        }
                        if roll >= 95 {
                            let from = 1 + rng.below((ACCOUNTS - 40) as u64) as i32;
                            tx.execute(
                                "UPDATE accounts SET note = md5(random()::text) WHERE id BETWEEN $1 AND $1 + 39",
                                &[&from],
                            )
                            .await?;
                        }
                        Ok::<_, tokio_postgres::Error>((id, deleted))
                    }
                    .await;
                    match result {
                        Ok((id, deleted)) => match tx.commit().await {
                            Ok(()) => {
                                committed += 1;
                                if let Some(i) = deleted {
                                    mine.swap_remove(i);
                                }
                                mine.push(id);
                            }
                            Err(e) => eprintln!("writer {w}: commit failed: {e}"),
                        },
                        // A deadlock: rolled back, so in neither log.
                        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {}
                        Err(e) => panic!("writer {w}: {e}"),
                    }
                    tokio::time::sleep(pause).await;
                }
                committed
            })
        })
        .collect()
}

/// Waits until the audit has as many rows as the change log, then holds
/// every change to exactly once: per transaction (xid), the audit's
/// changes in order are the source's changes in order; no audit row was
/// written twice; each transaction has one commit LSN and positions 0..n;
/// and the final account balances are the audit's last images.
async fn assert_exactly_once(client: &tokio_postgres::Client, sluice: &Sluice, min_changes: i64) {
    let expected = count(client, "SELECT count(*) FROM changelog").await;
    assert!(expected >= min_changes, "the workload made only {expected} changes");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let audited = count(client, "SELECT count(*) FROM cdc_audit").await;
        if audited >= expected {
            break;
        }
        assert!(Instant::now() < deadline, "only {audited} of {expected} changes audited; log:\n{}", sluice.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(count(client, "SELECT count(*) FROM cdc_audit").await, expected, "no more audit rows than changes");
    let mismatched = count(
        client,
        "WITH a AS (SELECT xid, row_number() OVER (PARTITION BY xid ORDER BY change_index) AS n, op, element_id
                    FROM cdc_audit),
              s AS (SELECT xid, row_number() OVER (PARTITION BY xid ORDER BY id) AS n, op, element_id
                    FROM changelog)
         SELECT count(*) FROM a FULL JOIN s USING (xid, n)
         WHERE a.op IS DISTINCT FROM s.op OR a.element_id IS DISTINCT FROM s.element_id",
    )
    .await;
    assert_eq!(mismatched, 0, "the audit's changes per transaction are the source's, in order");
    assert_eq!(count(client, "SELECT count(*) FROM audit_attempts WHERE n > 1").await, 0, "no change applied twice");
    assert_eq!(count(client, "SELECT count(*) FROM audit_attempts").await, expected);
    let malformed = count(
        client,
        "SELECT count(*) FROM (SELECT xid FROM cdc_audit GROUP BY xid
                               HAVING count(DISTINCT commit_lsn) <> 1 OR min(change_index) <> 0
                                   OR max(change_index) <> count(*) - 1) t",
    )
    .await;
    assert_eq!(malformed, 0, "one commit LSN and positions 0..n per transaction");
    let stale = count(
        client,
        "SELECT count(*) FROM accounts a
         WHERE a.balance <> coalesce((SELECT (after->>'balance')::bigint FROM cdc_audit
                                      WHERE element_id = 'accounts:' || a.id
                                      ORDER BY commit_lsn DESC, change_index DESC LIMIT 1), 0)",
    )
    .await;
    assert_eq!(stale, 0, "each account's last audited image is its balance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_kills_under_concurrent_writers_lose_and_repeat_nothing() {
    let db = TestDb::new().await;
    let client = db.client().await;
    create_workload_tables(&client).await;
    // Small parts and memory: the larger transactions spill and arrive in several calls.
    let toml = cdc_toml(&db, &["accounts", "tellers", "history"], "batch_changes = 16\nmemory_changes = 20");
    let mut sluice = Sluice::start(Some(&db), &toml);
    wait_for_slot(&client, &db, &sluice).await;
    count_audit_attempts(&client).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_workload(&db.url, 4, Duration::from_millis(2), stop.clone());
    let mut rng = Rng::seeded();
    for _ in 0..10 {
        // A random moment: connecting, waiting for the lock, streaming, or mid-apply.
        tokio::time::sleep(Duration::from_millis(200 + rng.below(1800))).await;
        kill(&mut sluice);
        sluice = Sluice::start(Some(&db), &toml);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    eprintln!("{committed} transactions committed by the writers");
    assert_exactly_once(&client, &sluice, 2000).await;
    let transactions = count(&client, "SELECT count(DISTINCT commit_lsn) FROM cdc_audit").await;
    assert_eq!(transactions, committed as i64, "every committed transaction audited");
    sluice.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_killed_owner_within_seconds() {
    takeover(Stop::Kill).await;
}

/// A frozen owner (SIGSTOP) keeps its sessions open but stops beating: the
/// standby ends them and takes over; thawed, the old owner finds its
/// sessions gone, stands by, and applies nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_a_frozen_owner_within_seconds() {
    takeover(Stop::Freeze).await;
}

#[derive(Clone, Copy, PartialEq)]
enum Stop {
    Kill,
    Freeze,
}

fn signal(sluice: &Sluice, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(sluice.child.id() as i32), signal).unwrap();
}

async fn takeover(how: Stop) {
    let db = TestDb::new().await;
    let client = db.client().await;
    create_workload_tables(&client).await;
    let toml = cdc_toml(&db, &["accounts", "tellers", "history"], "");
    let mut owner = Sluice::start(Some(&db), &toml);
    wait_for_slot(&client, &db, &owner).await;
    count_audit_attempts(&client).await;
    let standby = Sluice::start(Some(&db), &toml);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !standby.log().contains("standby: another host streams this slot") {
        assert!(Instant::now() < deadline, "no standby; log:\n{}", standby.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_workload(&db.url, 4, Duration::from_millis(10), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    let killed_at_wall: SystemTime = SystemTime::now();
    match how {
        Stop::Kill => kill(&mut owner),
        Stop::Freeze => signal(&owner, nix::sys::signal::Signal::SIGSTOP),
    }
    let checkpoint_at_kill = count(&client, "SELECT (lsn - '0/0')::bigint FROM sluice_cdc_checkpoints").await;
    // Streaming again: the slot is active and a transaction committed after
    // the kill is applied.
    // Streaming: the standby owns the slot and streams it. Applying: its
    // first transaction is committed (the checkpoint moves). Caught up: a
    // transaction committed after the kill is applied.
    let deadline = killed_at + Duration::from_secs(60);
    let (mut streaming, mut applying, mut caught_up) = (None, None, None);
    while caught_up.is_none() {
        assert!(Instant::now() < deadline, "the standby never took over; log:\n{}", standby.log());
        if streaming.is_none() && standby.log().contains("owns the slot") && slot_active(&client, &db).await {
            streaming = Some(killed_at.elapsed());
        }
        if streaming.is_some()
            && applying.is_none()
            && count(&client, "SELECT (lsn - '0/0')::bigint FROM sluice_cdc_checkpoints").await > checkpoint_at_kill
        {
            applying = Some(killed_at.elapsed());
        }
        let after_kill: i64 = client
            .query_one("SELECT count(*) FROM cdc_audit WHERE commit_time > $1", &[&killed_at_wall])
            .await
            .unwrap()
            .get(0);
        if applying.is_some() && after_kill > 0 {
            caught_up = Some(killed_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (streaming, applying, caught_up) = (streaming.unwrap(), applying.unwrap(), caught_up.unwrap());
    eprintln!("takeover after the kill: streaming {streaming:?}, applying {applying:?}, caught up {caught_up:?}");
    assert!(applying <= Duration::from_secs(10), "takeover took {applying:?}; log:\n{}", standby.log());

    if how == Stop::Freeze {
        signal(&owner, nix::sys::signal::Signal::SIGCONT);
        let deadline = Instant::now() + Duration::from_secs(30);
        while owner.log().matches("standby: another host streams this slot").count() == 0 {
            assert!(Instant::now() < deadline, "the thawed owner did not stand by; log:\n{}", owner.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(standby.log().contains("stopped beating"), "{}", standby.log());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    assert_exactly_once(&client, &standby, 500).await;
    let transactions = count(&client, "SELECT count(DISTINCT commit_lsn) FROM cdc_audit").await;
    assert_eq!(transactions, committed as i64, "every committed transaction audited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_slot_confirms_the_wal_it_does_not_need() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE watched (id int PRIMARY KEY); CREATE TABLE unwatched (id int, filler text)")
        .await
        .unwrap();
    let sluice = Sluice::start(Some(&db), &cdc_toml(&db, &["watched"], ""));
    wait_for_slot(&client, &db, &sluice).await;
    let slot = format!("s_{}", db.name);
    let confirmed = || async {
        client
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = confirmed().await;
    // WAL moves, none of it for the publication: rows of another table, a
    // logical decoding message, a switch to a new segment.
    client
        .batch_execute(
            "INSERT INTO unwatched SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
             SELECT pg_logical_emit_message(true, 'sluice-test', 'not for the slot');
             SELECT pg_switch_wal();
             INSERT INTO unwatched VALUES (0, 'after the switch');",
        )
        .await
        .unwrap();
    let target: i64 = client.query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[]).await.unwrap().get(0);
    assert!(target > before + 1_000_000, "the workload moved the WAL");
    let started = Instant::now();
    while confirmed().await < target {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "confirmed_flush_lsn stuck at {} below {target}; log:\n{}",
            confirmed().await,
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the idle slot confirmed the WAL end in {:?}", started.elapsed());
    let audited: i64 = count(&client, "SELECT count(*) FROM cdc_audit").await;
    assert_eq!(audited, 0, "nothing of the unpublished table is delivered");
    // The checkpoint did not move either: no transaction was applied.
    let checkpoint = count(&client, "SELECT (lsn - '0/0')::bigint FROM sluice_cdc_checkpoints").await;
    assert_eq!(checkpoint, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_of_200k_changes_arrives_whole_and_in_order() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // A small decoding memory: the server streams the transaction before it commits.
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v text);
             ALTER DATABASE {} SET logical_decoding_work_mem = '64kB';",
            db.name
        ))
        .await
        .unwrap();
    let data = std::env::temp_dir().join(format!("sluice-cdc-big-{}", std::process::id()));
    let sluice = Sluice::start_in(
        Some(&db),
        &cdc_toml(&db, &["big"], "batch_changes = 5000\nmemory_changes = 10000"),
        Some(&data),
    );
    wait_for_slot(&client, &db, &sluice).await;
    // 200,000 rows kept, 500 in an aborted subtransaction in the middle.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 100000) g;
             SAVEPOINT s;
             INSERT INTO big SELECT g, 'aborted' FROM generate_series(300001, 300500) g;
             ROLLBACK TO SAVEPOINT s;
             INSERT INTO big SELECT g, 'v' || g FROM generate_series(100001, 200000) g;
             COMMIT;",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while count(&client, "SELECT count(*) FROM cdc_audit").await < 200_000 {
        assert!(
            Instant::now() < deadline,
            "{} of 200000 audited; log:\n{}",
            count(&client, "SELECT count(*) FROM cdc_audit").await,
            sluice.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT commit_lsn), count(DISTINCT xid),
                    count(*) FILTER (WHERE element_id <> 'big:' || (change_index + 1) OR op <> 'insert'
                                        OR after->>'v' <> 'v' || (change_index + 1))
             FROM cdc_audit",
            &[],
        )
        .await
        .unwrap();
    let (rows, lsns, xids, out_of_place): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!((rows, lsns, xids), (200_000, 1, 1), "one transaction, whole, without the aborted subtransaction");
    assert_eq!(out_of_place, 0, "change i is row i + 1: in commit order");
    // The server did stream it, and the host's spill file is gone.
    let streamed: i64 = client
        .query_one(
            "SELECT stream_txns FROM pg_stat_replication_slots WHERE slot_name = $1",
            &[&format!("s_{}", db.name)],
        )
        .await
        .unwrap()
        .get(0);
    assert!(streamed >= 1, "the transaction was streamed before its commit");
    let spill = data.join("cdc-spill").join("shop");
    let left = std::fs::read_dir(&spill).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "spill files left in {}", spill.display());
    drop(sluice);
    let _ = std::fs::remove_dir_all(&data);
}

/// Faults injected between a change group's effects and its checkpoint,
/// and between its commit and the confirmation to the source: the stream
/// reconnects each time and every change is applied exactly once.
async fn failpoint_under_concurrent_writers(failpoint: &str) {
    let db = TestDb::new().await;
    let client = db.client().await;
    create_workload_tables(&client).await;
    let toml = cdc_toml(&db, &["accounts", "tellers", "history"], "batch_changes = 16\nmemory_changes = 20");
    let failpoints = format!("{failpoint}=20%3*return");
    let sluice = Sluice::start_with_env(&toml, &[("SLUICE_DATABASE_URL", &db.url), ("FAILPOINTS", &failpoints)]);
    wait_for_slot(&client, &db, &sluice).await;
    count_audit_attempts(&client).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers = start_workload(&db.url, 4, Duration::from_millis(2), stop.clone());
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for writer in writers {
        committed += writer.await.unwrap();
    }
    assert_exactly_once(&client, &sluice, 500).await;
    let transactions = count(&client, "SELECT count(DISTINCT commit_lsn) FROM cdc_audit").await;
    assert_eq!(transactions, committed as i64, "every committed transaction audited");
    let fired = sluice.log().matches(&format!("failpoint {failpoint}")).count();
    eprintln!("{failpoint}: fired {fired} times, {committed} transactions");
    assert!(fired > 0, "the failpoint never fired; log:\n{}", sluice.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_between_effects_and_checkpoint_repeats_nothing() {
    failpoint_under_concurrent_writers("cdc-before-checkpoint").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_between_commit_and_confirm_repeats_nothing() {
    failpoint_under_concurrent_writers("cdc-before-confirm").await;
}
