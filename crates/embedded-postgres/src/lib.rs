//! A private PostgreSQL cluster run from the locally installed server binaries.
//!
//! `sluice serve` uses it when no database is configured (the data lives in a
//! folder that survives restarts), and the tests use it for a throwaway
//! cluster per test process (copied from a template made once, `fsync=off`).
//!
//! Files, for a data folder `D` (all of them in D's parent folder):
//! - `D/`: the cluster (PGDATA), owned by the user the server runs as;
//! - `D.password`: the password of the superuser `sluice`, mode 0600, owned by
//!   the caller; generated at initdb time, never logged;
//! - `D.log`: the server log (moved to `D.log.1` once it outgrows 16 MiB);
//! - `D.lock`: locked (flock) by the process running the cluster, so two
//!   processes never run the same folder.
//!
//! A template `T` is a folder holding `T/data` (an initialized, cleanly shut
//! down cluster) and `T/password`; it is made once (initdb into a temporary
//! folder next to it, then an atomic rename) and copied for each cluster.
//!
//! PostgreSQL refuses to run as root: when the caller is root, the server
//! programs run as the `postgres` user, which owns the data folder and must be
//! able to enter its parent folder.
//!
//! A small watchdog process (`sh`) is started with each cluster: when the
//! process owning the [`Cluster`] dies without stopping it (killed, or a
//! `static` that is never dropped), the watchdog stops the server (and, with
//! [`ClusterOptions::remove_on_stop`], deletes its files).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// The superuser the cluster is created with.
pub const USER: &str = "sluice";
/// The database created in the cluster.
pub const DATABASE: &str = "sluice";
/// The only address the server listens on.
pub const HOST: &str = "127.0.0.1";

/// Environment variable naming the folder with the server binaries.
pub const BINDIR_ENV: &str = "SLUICE_PG_BINDIR";

const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
const OLDEST_SUPPORTED_MAJOR: u32 = 10;
const LOG_ROTATE_BYTES: u64 = 16 << 20;
const START_ATTEMPTS: usize = 3;
const PG_CTL_TIMEOUT_SECS: &str = "120";
/// libpq/server variables of the caller that must not reach the server programs.
const CLEARED_ENV: [&str; 12] = [
    "PGDATA",
    "PGPORT",
    "PGHOST",
    "PGHOSTADDR",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSYSCONFDIR",
    "PGCTLTIMEOUT",
];

const INSTALL_HINT: &str = "Install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; \
     Fedora/RHEL: `dnf install postgresql-server`; macOS: `brew install postgresql`) or set \
     SLUICE_PG_BINDIR to the folder holding initdb, pg_ctl and postgres; or set `database.url` \
     (or SLUICE_DATABASE_URL) to use an existing server instead of a private one.";

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's folder (PGDATA); created when missing, may be relative.
    /// Missing or empty: a new cluster is made (initdb, or a copy of
    /// `template`); holding a cluster: that cluster is started.
    pub data_dir: PathBuf,
    /// `false` turns off `fsync` and `full_page_writes` (and initdb's sync):
    /// much faster, and a crash of the machine loses the cluster. Tests only.
    pub fsync: bool,
    /// A template folder to copy new clusters from instead of running initdb;
    /// made on first use. Every copy has the template's password.
    pub template: Option<PathBuf>,
    /// Extra server settings, passed as `-c name=value` after (so overriding)
    /// the module's own.
    pub settings: Vec<(String, String)>,
    /// The folder with the server binaries; `None`: [`Cluster::find_bindir`].
    pub bindir: Option<PathBuf>,
    /// Delete the data folder and its `.password`, `.log` and `.lock` files
    /// when the cluster stops (also when the owning process dies). For
    /// throwaway clusters.
    pub remove_on_stop: bool,
    /// The TCP port on 127.0.0.1; `None` picks a free one at each start.
    pub port: Option<u16>,
}

impl ClusterOptions {
    /// A durable cluster in `data_dir`: fsync on, no template, nothing removed.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ClusterOptions {
            data_dir: data_dir.into(),
            fsync: true,
            template: None,
            settings: Vec::new(),
            bindir: None,
            remove_on_stop: false,
            port: None,
        }
    }
}

/// A running private PostgreSQL server. Stopped by [`Cluster::stop`] or on drop.
pub struct Cluster {
    server: Server,
    paths: Paths,
    port: u16,
    password: String,
    /// The postmaster's process id while running.
    pid: Option<i32>,
    remove_on_stop: bool,
    removed: bool,
    /// The watchdog; its stdin is the pipe whose closing tells it we are gone.
    guardian: Option<Child>,
    /// Held (flock) while this value owns the data folder.
    lock: Option<File>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: the password must never be printed.
        f.debug_struct("Cluster")
            .field("data_dir", &self.paths.data)
            .field("port", &self.port)
            .field("pid", &self.pid)
            .field("bindir", &self.server.dir)
            .field("remove_on_stop", &self.remove_on_stop)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Finds the folder with the server binaries (initdb, pg_ctl, postgres):
    /// `$SLUICE_PG_BINDIR` when set, else `pg_config --bindir`, else the
    /// highest `/usr/lib/postgresql/*/bin` (or `/usr/pgsql-*/bin`), else the
    /// folder of a `pg_ctl` on PATH.
    pub fn find_bindir() -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            if let Some(missing) = missing_program(&dir) {
                bail!(
                    "{BINDIR_ENV}={} has no `{missing}`: it must name the folder holding the \
                     PostgreSQL server binaries. {INSTALL_HINT}",
                    dir.display()
                );
            }
            return Ok(dir);
        }
        let mut looked = Vec::new();
        match Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if missing_program(&dir).is_none() {
                    return Ok(dir);
                }
                looked.push(format!("{} (from `pg_config --bindir`)", dir.display()));
            }
            _ => looked.push("`pg_config --bindir` (not found)".into()),
        }
        let mut versioned = Vec::new();
        for (parent, prefix, suffix) in [("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")] {
            let Ok(entries) = fs::read_dir(parent) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(version) = name.strip_prefix(prefix).and_then(parse_version) else {
                    continue;
                };
                versioned.push((version, entry.path().join(suffix)));
            }
        }
        versioned.sort();
        if let Some((_, dir)) = versioned.iter().rev().find(|(_, d)| missing_program(d).is_none()) {
            return Ok(dir.clone());
        }
        looked.push("/usr/lib/postgresql/*/bin, /usr/pgsql-*/bin".into());
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                if dir.join("pg_ctl").is_file() && missing_program(&dir).is_none() {
                    return Ok(dir);
                }
            }
        }
        looked.push("PATH".into());
        bail!(
            "the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found (looked at: \
             {BINDIR_ENV} (unset), {}). {INSTALL_HINT}",
            looked.join(", ")
        )
    }

    /// Makes the cluster if needed (initdb, or a copy of the template) and
    /// starts it on a free port of 127.0.0.1, waiting until it accepts
    /// connections. Blocking: from async code, call it in `spawn_blocking`.
    pub fn start(options: ClusterOptions) -> Result<Cluster> {
        let started = Instant::now();
        let paths = Paths::new(&options.data_dir)?;
        let explicit_bindir = options.bindir.is_some() || std::env::var_os(BINDIR_ENV).is_some_and(|v| !v.is_empty());
        let bindir = match &options.bindir {
            Some(dir) => dir.clone(),
            None => Cluster::find_bindir()?,
        };
        let run_as = server_user()?;
        let server = Server::new(bindir, run_as)?;
        for (name, _) in &options.settings {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                bail!("invalid PostgreSQL setting name {name:?}");
            }
        }

        let parent = paths.data.parent().expect("Paths::new checks it").to_path_buf();
        fs::create_dir_all(&parent).with_context(|| format!("could not create the folder {}", parent.display()))?;
        let template = match &options.template {
            Some(t) => Some(absolute_path(t).context("bad template folder")?),
            None => None,
        };
        if let Some(run_as) = &server.run_as {
            check_reachable(&parent, run_as)?;
            if let Some(t) = &template {
                let t_parent = t.parent().expect("absolute_path checks it");
                fs::create_dir_all(t_parent)
                    .with_context(|| format!("could not create the folder {}", t_parent.display()))?;
                check_reachable(t_parent, run_as)?;
            }
        }

        let lock = lock_data_dir(&paths)?;
        let initialized = is_cluster(&paths.data);
        if !initialized && paths.data.exists() && !is_empty_dir(&paths.data)? {
            bail!(
                "{} is neither empty nor a PostgreSQL cluster; remove it or choose another folder",
                paths.data.display()
            );
        }

        let mut cluster = Cluster {
            server,
            paths,
            port: 0,
            password: String::new(),
            pid: None,
            // A cluster that was there before is removed only once started.
            remove_on_stop: options.remove_on_stop && !initialized,
            removed: false,
            guardian: None,
            lock: Some(lock),
        };
        // From here on, an error drops `cluster`, which cleans up.

        if initialized {
            let version = read_pg_version(&cluster.paths.data)?;
            if version != cluster.server.major.to_string() {
                let debian = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
                if !explicit_bindir && missing_program(&debian).is_none() {
                    tracing::info!(data_dir = %cluster.paths.data.display(), bindir = %debian.display(),
                        "using the server binaries matching the data folder's PostgreSQL version");
                    cluster.server = Server::new(debian, cluster.server.run_as.clone())?;
                } else {
                    bail!(
                        "{} holds a PostgreSQL {version} cluster but the server binaries in {} are \
                         PostgreSQL {}: install PostgreSQL {version} (and set {BINDIR_ENV} to its \
                         bin folder), upgrade the cluster with pg_upgrade, or move the folder away \
                         to start afresh",
                        cluster.paths.data.display(),
                        cluster.server.dir.display(),
                        cluster.server.major
                    );
                }
            }
            clear_previous_server(&cluster.server, &cluster.paths.data)?;
            cluster.password = match read_password(&cluster.paths.password)? {
                Some(password) => password,
                None => {
                    tracing::warn!(data_dir = %cluster.paths.data.display(),
                        "the cluster's password file is missing; setting a new password");
                    reset_password(&cluster.server, &cluster.paths, options.fsync)?
                }
            };
        } else {
            let server = &cluster.server;
            let staging = Staging::create(&cluster.paths.data, server.run_as.as_ref())?;
            match &template {
                Some(template) => {
                    ensure_template(server, template, options.fsync)?;
                    copy_template(template, &staging.path)?;
                }
                None => {
                    tracing::info!(data_dir = %cluster.paths.data.display(), "initializing a PostgreSQL cluster");
                    init_cluster(server, &staging.path, options.fsync)?;
                }
            }
            install(&staging.path, &cluster.paths, server.run_as.as_ref())?;
            cluster.password = read_password(&cluster.paths.password)?
                .ok_or_else(|| anyhow!("{} vanished", cluster.paths.password.display()))?;
        }

        prepare_log(&cluster.paths.log, cluster.server.run_as.as_ref())?;
        let mut settings = base_settings(options.fsync);
        settings.extend(options.settings.iter().cloned());
        cluster.start_server(&settings, options.port)?;
        cluster.remove_on_stop = options.remove_on_stop;
        cluster.guardian = Some(cluster.spawn_guardian()?);
        tracing::info!(
            data_dir = %cluster.paths.data.display(),
            port = cluster.port,
            pid = cluster.pid,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "private PostgreSQL started"
        );
        Ok(cluster)
    }

    /// `postgres://sluice:PASSWORD@127.0.0.1:PORT/sluice`. Contains the password: do not log it.
    pub fn url(&self) -> String {
        format!("postgres://{USER}:{}@{HOST}:{}/{DATABASE}", self.password, self.port)
    }

    /// The TCP port on 127.0.0.1 (a new one at each start).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The password of the superuser [`USER`]. Secret: do not log it.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's folder (absolute).
    pub fn data_dir(&self) -> &Path {
        &self.paths.data
    }

    /// The file holding the password (mode 0600): `<data_dir>.password`.
    pub fn password_file(&self) -> &Path {
        &self.paths.password
    }

    /// The server log: `<data_dir>.log`.
    pub fn log_file(&self) -> &Path {
        &self.paths.log
    }

    /// The folder of the server binaries in use (psql is usually there too).
    pub fn bindir(&self) -> &Path {
        &self.server.dir
    }

    /// The postmaster's process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.pid.map(|p| p as u32)
    }

    pub fn is_running(&self) -> bool {
        self.pid.is_some()
    }

    /// Stops the server (`pg_ctl stop -m fast`), then deletes the files if
    /// `remove_on_stop`, then releases the data folder. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(pid) = self.pid {
            if self.paths.data.join("postmaster.pid").exists() {
                let offset = file_len(&self.paths.log);
                // A server that died on its own is stopped too.
                if let Err(err) = pg_ctl_stop(&self.server, &self.paths.data, "fast")
                    && process_alive(pid)
                {
                    return Err(err.context(format!(
                        "could not stop the private PostgreSQL server in {}{}",
                        self.paths.data.display(),
                        log_tail_note(&self.paths.log, offset)
                    )));
                }
            }
            self.pid = None;
            tracing::info!(data_dir = %self.paths.data.display(), port = self.port, "private PostgreSQL stopped");
        }
        if let Some(mut guardian) = self.guardian.take() {
            let _ = guardian.kill();
            let _ = guardian.wait();
        }
        if self.remove_on_stop && !self.removed && self.lock.is_some() {
            for path in self.paths.removable() {
                let result = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
                match result {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("could not remove {}", path.display()));
                    }
                }
            }
            self.removed = true;
        }
        self.lock = None;
        Ok(())
    }

    fn start_server(&mut self, settings: &[(String, String)], fixed_port: Option<u16>) -> Result<()> {
        for attempt in 1..=START_ATTEMPTS {
            let port = match fixed_port {
                Some(port) => port,
                None => free_port()?,
            };
            let mut options = vec!["-p".to_string(), port.to_string(), "-k".into(), String::new()];
            for (name, value) in settings {
                options.push("-c".into());
                options.push(format!("{name}={value}"));
            }
            // pg_ctl hands -o to /bin/sh: quote every word.
            let options: Vec<String> = options.iter().map(|o| shell_quote(o)).collect();
            let offset = file_len(&self.paths.log);
            let mut cmd = self.server.command("pg_ctl");
            cmd.arg("start")
                .arg("-D")
                .arg(&self.paths.data)
                .arg("-l")
                .arg(&self.paths.log)
                .args(["-w", "-s", "-t", PG_CTL_TIMEOUT_SECS, "-o"])
                .arg(options.join(" "));
            let out = cmd.output().context("could not run pg_ctl")?;
            if out.status.success() {
                self.port = port;
                self.pid = Some(read_postmaster_pid(&self.paths.data).ok_or_else(|| {
                    anyhow!("pg_ctl started the server but {}/postmaster.pid is unreadable", self.paths.data.display())
                })?);
                return Ok(());
            }
            let tail = log_tail(&self.paths.log, offset);
            // A server still starting (pg_ctl timed out) must not be left behind.
            if read_postmaster_pid(&self.paths.data).is_some_and(process_alive) {
                let _ = pg_ctl_stop(&self.server, &self.paths.data, "immediate");
            }
            if attempt < START_ATTEMPTS && fixed_port.is_none() && tail.contains("could not bind") {
                tracing::info!(port, "port taken meanwhile; retrying on another one");
                continue;
            }
            bail!(
                "could not start the private PostgreSQL server in {} (pg_ctl: {}{}){}",
                self.paths.data.display(),
                out.status,
                nonempty_prefix(": ", &output_text(&out)),
                if tail.is_empty() {
                    String::new()
                } else {
                    format!("; last lines of {}:\n{tail}", self.paths.log.display())
                }
            );
        }
        unreachable!()
    }

    /// A `sh` that waits for EOF on its stdin (the pipe's other end lives in
    /// this process only), then stops the postmaster and, with
    /// `remove_on_stop`, deletes the files. It has its own process group so a
    /// Ctrl-C at the terminal does not reach it.
    fn spawn_guardian(&self) -> Result<Child> {
        const SCRIPT: &str = r#"trap '' INT HUP
read -r _ignored
pid=$1; sig=$2; remove=$3; shift 3
kill -"$sig" "$pid" 2>/dev/null
n=0
while kill -0 "$pid" 2>/dev/null && [ "$n" -lt 600 ]; do sleep 0.1; n=$((n+1)); done
if [ "$remove" = remove ]; then rm -rf -- "$@"; fi
"#;
        let pid = self.pid.expect("called once started");
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("sluice-postgres-watchdog")
            .arg(pid.to_string())
            // SIGINT: fast shutdown; SIGQUIT: immediate (the data is thrown away anyway).
            .arg(if self.remove_on_stop { "QUIT" } else { "INT" })
            .arg(if self.remove_on_stop { "remove" } else { "keep" })
            .args(self.paths.removable())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        cmd.spawn().context("could not start the watchdog process (/bin/sh)")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(err) = self.stop() {
            tracing::warn!(data_dir = %self.paths.data.display(), "{err:#}");
        }
    }
}

/// The paths of one cluster, all absolute.
#[derive(Debug, Clone)]
struct Paths {
    data: PathBuf,
    password: PathBuf,
    log: PathBuf,
    lock: PathBuf,
}

impl Paths {
    fn new(data_dir: &Path) -> Result<Paths> {
        let data = absolute_path(data_dir).context("bad data folder")?;
        Ok(Paths {
            password: sidecar(&data, "password"),
            log: sidecar(&data, "log"),
            lock: sidecar(&data, "lock"),
            data,
        })
    }

    /// What `remove_on_stop` deletes; the lock file last.
    fn removable(&self) -> Vec<PathBuf> {
        vec![
            self.data.clone(),
            self.password.clone(),
            self.log.clone(),
            sidecar(&self.data, "log.1"),
            self.lock.clone(),
        ]
    }
}

/// `/a/b` + `ext` → `/a/b.ext`
fn sidecar(path: &Path, ext: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

/// Absolute, without `.` or trailing `/`, with a parent and a file name, and
/// without the characters pg_ctl's shell command line cannot take.
fn absolute_path(path: &Path) -> Result<PathBuf> {
    if path.as_os_str().is_empty() {
        bail!("the path is empty");
    }
    let path: PathBuf = std::path::absolute(path)
        .with_context(|| format!("could not make {} absolute", path.display()))?
        .components()
        .collect();
    if path.parent().is_none() || path.file_name().is_none() {
        bail!("{} cannot hold a cluster: name a folder below it", path.display());
    }
    let text = path.to_string_lossy();
    if let Some(c) = text.chars().find(|c| matches!(c, '"' | '$' | '`' | '\\' | '\n' | '\r')) {
        bail!("{text:?} contains {c:?}, which pg_ctl cannot pass on: choose another folder");
    }
    Ok(path)
}

/// The user the server programs run as: `None` for the current user, the
/// `postgres` user when running as root.
#[derive(Debug, Clone)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn server_user() -> Result<Option<RunAs>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name("postgres") {
        Ok(Some(user)) if !user.uid.is_root() => Ok(Some(RunAs { uid: user.uid.as_raw(), gid: user.gid.as_raw() })),
        Ok(_) => bail!(
            "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` \
             user to run it as: create one (installing the PostgreSQL server package does), or run \
             sluice as another user. {INSTALL_HINT}"
        ),
        Err(err) => Err(anyhow!(err)).context("could not look up the `postgres` user"),
    }
}

/// Whether `run_as` can enter `dir` (and so every folder above it).
fn reachable(dir: &Path, run_as: &RunAs) -> bool {
    Command::new("/bin/sh")
        .args(["-c", r#"test -x "$1""#, "sh"])
        .arg(dir)
        .uid(run_as.uid)
        .gid(run_as.gid)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn check_reachable(dir: &Path, run_as: &RunAs) -> Result<()> {
    if reachable(dir, run_as) {
        return Ok(());
    }
    let ancestors: Vec<&Path> = dir.ancestors().collect();
    let blocker = ancestors.into_iter().rev().find(|a| !reachable(a, run_as)).unwrap_or(dir);
    let mode = fs::metadata(blocker).map(|m| format!("{:o}", m.permissions().mode() & 0o7777));
    bail!(
        "the PostgreSQL server runs as the `postgres` user (it refuses to run as root), and that \
         user cannot enter {} (mode {}): put the data folder where it can (e.g. under /var/lib or \
         /tmp), allow it (`chmod o+x {}`), or set `database.url` (or SLUICE_DATABASE_URL) to use an \
         existing server",
        blocker.display(),
        mode.unwrap_or_else(|_| "unknown".into()),
        blocker.display()
    )
}

/// The server binaries folder, its major version, and whom to run them as.
#[derive(Debug, Clone)]
struct Server {
    dir: PathBuf,
    major: u32,
    run_as: Option<RunAs>,
}

impl Server {
    fn new(dir: PathBuf, run_as: Option<RunAs>) -> Result<Server> {
        if let Some(missing) = missing_program(&dir) {
            bail!("{} has no `{missing}`. {INSTALL_HINT}", dir.display());
        }
        let postgres = dir.join("postgres");
        let out = Command::new(&postgres)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not run {}", postgres.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
        let major = text
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .and_then(|w| w.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|m| m.parse::<u32>().ok())
            .ok_or_else(|| anyhow!("could not read the version of {}: {:?}", postgres.display(), text.trim()))?;
        if major < OLDEST_SUPPORTED_MAJOR {
            bail!(
                "{} is PostgreSQL {major}; logical replication needs {OLDEST_SUPPORTED_MAJOR} or newer. {INSTALL_HINT}",
                dir.display()
            );
        }
        Ok(Server { dir, major, run_as })
    }

    /// A server program, run as the server user, from `/`, without the
    /// caller's libpq variables.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.dir.join(program));
        if let Some(run_as) = &self.run_as {
            cmd.uid(run_as.uid).gid(run_as.gid);
        }
        for var in CLEARED_ENV {
            cmd.env_remove(var);
        }
        cmd.current_dir("/").stdin(Stdio::null());
        cmd
    }
}

fn missing_program(dir: &Path) -> Option<&'static str> {
    SERVER_PROGRAMS.into_iter().find(|p| !dir.join(p).is_file())
}

/// "15" → [15], "9.6" → [9, 6]; None for anything else.
fn parse_version(s: &str) -> Option<Vec<u32>> {
    s.split('.').map(|p| p.parse::<u32>().ok()).collect()
}

fn base_settings(fsync: bool) -> Vec<(String, String)> {
    let on_off = |b: bool| if b { "on" } else { "off" };
    [
        ("listen_addresses", HOST),
        ("wal_level", "logical"),
        ("synchronous_commit", "on"),
        ("max_wal_senders", "20"),
        ("max_replication_slots", "20"),
        ("password_encryption", "scram-sha-256"),
        ("fsync", on_off(fsync)),
        ("full_page_writes", on_off(fsync)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn is_cluster(data: &Path) -> bool {
    data.join("PG_VERSION").is_file()
}

fn read_pg_version(data: &Path) -> Result<String> {
    let path = data.join("PG_VERSION");
    Ok(fs::read_to_string(&path).with_context(|| format!("could not read {}", path.display()))?.trim().to_string())
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?.next().is_none())
}

fn lock_data_dir(paths: &Paths) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&paths.lock)
        .with_context(|| format!("could not open {}", paths.lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another process (it holds {}): stop it, or use another data folder",
            paths.data.display(),
            paths.lock.display()
        ),
        Err(fs::TryLockError::Error(err)) => {
            Err(err).with_context(|| format!("could not lock {}", paths.lock.display()))
        }
    }
}

fn read_password(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(text.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("could not read {}", path.display())),
    }
}

fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("could not read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` (which must not exist) with mode 0600, owned by `owner`
/// (the current user when `None`), holding `content`.
fn write_secret(path: &Path, content: &str, owner: Option<&RunAs>) -> Result<()> {
    let write = || -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        if let Some(owner) = owner {
            std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
        }
        file.write_all(content.as_bytes())?;
        file.sync_all()
    };
    write().with_context(|| format!("could not write {}", path.display()))
}

fn give_to(path: &Path, owner: Option<&RunAs>) -> Result<()> {
    if let Some(owner) = owner {
        std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
            .with_context(|| format!("could not chown {}", path.display()))?;
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("could not chmod {}", path.display()))
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{}-{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A private folder next to `target` (so renames out of it are atomic),
/// deleted when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn create(target: &Path, run_as: Option<&RunAs>) -> Result<Staging> {
        let name = target.file_name().expect("absolute_path checks it").to_string_lossy();
        let prefix = format!(".{name}.tmp-");
        Staging::sweep(target, &prefix);
        let path = target.with_file_name(format!("{prefix}{}", unique_suffix()));
        fs::create_dir(&path).with_context(|| format!("could not create {}", path.display()))?;
        let staging = Staging { path };
        // The server user must enter it (not list it) to reach what it owns inside.
        set_mode(&staging.path, if run_as.is_some() { 0o711 } else { 0o700 })?;
        Ok(staging)
    }

    /// Removes the staging folders left by processes that died meanwhile
    /// (their names start with `prefix` and the process id).
    fn sweep(target: &Path, prefix: &str) {
        let Some(Ok(entries)) = target.parent().map(fs::read_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<i32>().ok())
            else {
                continue;
            };
            if pid > 0 && !process_alive(pid) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Makes `staging/data` (a new cluster with the database `sluice`) and
/// `staging/password`.
fn init_cluster(server: &Server, staging: &Path, sync: bool) -> Result<()> {
    let run_as = server.run_as.as_ref();
    let password = random_password()?;
    let pwfile = staging.join("pwfile");
    write_secret(&pwfile, &format!("{password}\n"), run_as)?;
    let data = staging.join("data");
    fs::create_dir(&data).with_context(|| format!("could not create {}", data.display()))?;
    set_mode(&data, 0o700)?;
    give_to(&data, run_as)?;

    let mut pwfile_arg = OsString::from("--pwfile=");
    pwfile_arg.push(&pwfile);
    let mut cmd = server.command("initdb");
    cmd.arg("-D").arg(&data).arg(pwfile_arg).args(["-U", USER, "-A", "scram-sha-256", "-E", "UTF8", "--no-locale"]);
    if server.major >= 14 {
        cmd.arg("--no-instructions");
    }
    if !sync {
        cmd.arg("--no-sync");
    }
    let result = run_checked(cmd, "initdb");
    let _ = fs::remove_file(&pwfile);
    result?;

    single_user(server, &data, &format!("CREATE DATABASE {DATABASE};\n"), sync, None)?;
    write_secret(&staging.join("password"), &password, None)
}

/// Runs `sql` (one statement a line) in single-user mode (the server must
/// be stopped). `secret` is blanked out of any error.
fn single_user(server: &Server, data: &Path, sql: &str, sync: bool, secret: Option<&str>) -> Result<()> {
    let mut cmd = server.command("postgres");
    cmd.arg("--single").arg("-D").arg(data);
    if !sync {
        cmd.arg("-F");
    }
    cmd.arg("template1").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().context("could not run postgres --single")?;
    let written = child.stdin.take().expect("piped").write_all(sql.as_bytes());
    let out = child.wait_with_output().context("could not run postgres --single")?;
    let mut text = output_text(&out);
    if let Some(secret) = secret {
        text = text.replace(secret, "********");
    }
    if !out.status.success() || written.is_err() || ["ERROR:", "FATAL:", "PANIC:"].iter().any(|e| text.contains(e)) {
        bail!("postgres --single in {} failed ({}): {text}", data.display(), out.status);
    }
    Ok(())
}

/// Sets a new password for [`USER`] (server stopped) and writes the password file.
fn reset_password(server: &Server, paths: &Paths, sync: bool) -> Result<String> {
    let password = random_password()?;
    let sql = format!("ALTER ROLE {USER} WITH PASSWORD '{password}';\n");
    single_user(server, &paths.data, &sql, sync, Some(&password))?;
    let tmp = sidecar(&paths.password, &format!("tmp-{}", unique_suffix()));
    write_secret(&tmp, &password, None)?;
    fs::rename(&tmp, &paths.password).with_context(|| format!("could not write {}", paths.password.display()))?;
    Ok(password)
}

/// Makes the template `template` (`data/` + `password`) unless it is there
/// already. Several processes may race: each builds its own next to it and
/// renames it into place; the losers use the winner's.
fn ensure_template(server: &Server, template: &Path, sync: bool) -> Result<()> {
    let complete = |t: &Path| is_cluster(&t.join("data")) && t.join("password").is_file();
    if template.exists() {
        if complete(template) {
            let version = read_pg_version(&template.join("data"))?;
            if version == server.major.to_string() {
                return Ok(());
            }
            tracing::info!(template = %template.display(), version, "replacing a template made by another PostgreSQL version");
            let aside = template.with_file_name(format!(
                ".{}.old-{}",
                template.file_name().expect("absolute").to_string_lossy(),
                unique_suffix()
            ));
            match fs::rename(template, &aside) {
                Ok(()) => {
                    let _ = fs::remove_dir_all(&aside);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("could not move {} away", template.display()));
                }
            }
        } else if !is_empty_dir(template)? {
            bail!("{} is not a cluster template (it should hold data/ and password): remove it", template.display());
        }
    }
    let staging = Staging::create(template, server.run_as.as_ref())?;
    tracing::info!(template = %template.display(), "initializing a PostgreSQL template");
    init_cluster(server, &staging.path, sync)?;
    set_mode(&staging.path, 0o700)?;
    match fs::rename(&staging.path, template) {
        Ok(()) => Ok(()),
        Err(_) if complete(template) => Ok(()), // another process won the race
        Err(e) => {
            Err(e).with_context(|| format!("could not rename {} to {}", staging.path.display(), template.display()))
        }
    }
}

fn copy_template(template: &Path, staging: &Path) -> Result<()> {
    let mut cmd = Command::new("cp");
    cmd.arg("-a").arg(template.join("data")).arg(staging.join("data")).stdin(Stdio::null());
    run_checked(cmd, "cp -a (copying the template)")?;
    let password =
        read_password(&template.join("password"))?.ok_or_else(|| anyhow!("{} has no password", template.display()))?;
    write_secret(&staging.join("password"), &password, None)
}

/// Moves `staging/password` and `staging/data` into place (the password
/// first: a data folder without its password is worse than the reverse).
fn install(staging: &Path, paths: &Paths, run_as: Option<&RunAs>) -> Result<()> {
    fs::rename(staging.join("password"), &paths.password)
        .with_context(|| format!("could not write {}", paths.password.display()))?;
    let data = staging.join("data");
    if paths.data.exists() && fs::remove_dir(&paths.data).is_err() {
        // An empty folder we cannot replace (a mount point, say): fill it.
        give_to(&paths.data, run_as)?;
        set_mode(&paths.data, 0o700)?;
        let mut src = data.into_os_string();
        src.push("/.");
        let mut cmd = Command::new("cp");
        cmd.arg("-a").arg(src).arg(&paths.data).stdin(Stdio::null());
        run_checked(cmd, "cp -a (filling the data folder)")?;
        return Ok(());
    }
    fs::rename(&data, &paths.data)
        .with_context(|| format!("could not move the new cluster to {}", paths.data.display()))
}

fn prepare_log(log: &Path, run_as: Option<&RunAs>) -> Result<()> {
    if file_len(log) > LOG_ROTATE_BYTES {
        let _ = fs::rename(log, sidecar(log, "1"));
    }
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(log)
        .with_context(|| format!("could not create {}", log.display()))?;
    give_to(log, run_as)
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last lines written to `log` after `offset` (at most ~4 KiB).
fn log_tail(log: &Path, offset: u64) -> String {
    const MAX: u64 = 4096;
    let Ok(mut file) = File::open(log) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = offset.max(len.saturating_sub(MAX)).min(len);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let text: &str = &text;
    let text = if start > offset { text.split_once('\n').map_or("", |(_, rest)| rest) } else { text };
    text.trim_end().to_string()
}

fn log_tail_note(log: &Path, offset: u64) -> String {
    let tail = log_tail(log, offset);
    if tail.is_empty() { String::new() } else { format!("; last lines of {}:\n{tail}", log.display()) }
}

fn output_text(out: &Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(err.trim());
    }
    if text.len() > 4000 {
        let mut cut = text.len() - 4000;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = format!("...{}", &text[cut..]);
    }
    text
}

fn nonempty_prefix(prefix: &str, text: &str) -> String {
    if text.is_empty() { String::new() } else { format!("{prefix}{text}") }
}

fn run_checked(mut cmd: Command, what: &str) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("could not run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}){}", out.status, nonempty_prefix(": ", &output_text(&out)));
    }
    Ok(out)
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("could not find a free port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

fn read_postmaster_pid(data: &Path) -> Option<i32> {
    fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok().filter(|pid| *pid > 0)
}

fn process_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true, // EPERM: alive, someone else's
    }
}

fn pg_ctl_stop(server: &Server, data: &Path, mode: &str) -> Result<()> {
    let mut cmd = server.command("pg_ctl");
    cmd.arg("stop").arg("-D").arg(data).args(["-m", mode, "-w", "-s", "-t", PG_CTL_TIMEOUT_SECS]);
    run_checked(cmd, &format!("pg_ctl stop -m {mode}")).map(drop)
}

/// The processes whose working folder is `data` (a postmaster and its
/// children chdir there). `None` where /proc cannot tell.
fn processes_in(data: &Path) -> Option<Vec<i32>> {
    let data = fs::canonicalize(data).ok()?;
    let entries = fs::read_dir("/proc").ok()?;
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd == data) {
            pids.push(pid);
        }
    }
    Some(pids)
}

/// Before starting an existing cluster (the data folder is locked, so no
/// live owner runs it): stops a server a dead owner left running, waits for
/// the leftovers of a killed one, and removes a stale postmaster.pid whose
/// process id now belongs to another process (PostgreSQL would refuse it).
fn clear_previous_server(server: &Server, data: &Path) -> Result<()> {
    let pidfile = data.join("postmaster.pid");
    if !pidfile.exists() {
        return Ok(());
    }
    let recorded = read_postmaster_pid(data);
    let Some(mut inside) = processes_in(data) else {
        // No /proc: a live recorded process is taken for a running server.
        if recorded.is_some_and(process_alive) {
            tracing::warn!(data_dir = %data.display(), "stopping a PostgreSQL server left running by an earlier run");
            pg_ctl_stop(server, data, "fast")?;
        }
        return Ok(());
    };
    if let Some(pid) = recorded.filter(|p| inside.contains(p)) {
        tracing::warn!(data_dir = %data.display(), pid, "stopping a PostgreSQL server left running by an earlier run");
        if let Err(err) = pg_ctl_stop(server, data, "fast") {
            tracing::warn!("{err:#}; trying an immediate shutdown");
            pg_ctl_stop(server, data, "immediate")?;
        }
        inside = processes_in(data).unwrap_or_default();
    }
    // The children of a killed postmaster exit soon after it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !inside.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "processes {inside:?} still run in {} (left by a server that died?): stop them first",
                data.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
        inside = processes_in(data).unwrap_or_default();
    }
    if pidfile.exists() {
        // Nothing runs there: PostgreSQL would mostly cope, but not when the
        // recorded process id has been reused by another process.
        match fs::remove_file(&pidfile) {
            Ok(()) => tracing::info!(data_dir = %data.display(), "removed a stale postmaster.pid"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("could not remove {}", pidfile.display()));
            }
        }
    }
    Ok(())
}

/// The effective user id (tests use it to keep per-user folders apart).
#[cfg(test)]
fn current_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A folder under the system temp folder, deleted when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("sluice-embedded-{name}-{}", unique_suffix()));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The template shared by the test runs of this user (made once).
    fn shared_template() -> PathBuf {
        std::env::temp_dir().join(format!("sluice-embedded-tests-template-{}", current_uid()))
    }

    fn throwaway(dir: &Path, template: Option<PathBuf>) -> ClusterOptions {
        ClusterOptions { fsync: false, template, remove_on_stop: true, ..ClusterOptions::new(dir.join("pg")) }
    }

    /// Runs `sql` with the bindir's psql over TCP, password auth.
    fn try_psql(cluster: &Cluster, sql: &str) -> std::result::Result<String, String> {
        let out = Command::new(cluster.bindir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-U", USER, "-d", DATABASE])
            .args(["-p", &cluster.port().to_string(), "-c", sql])
            .env("PGPASSWORD", cluster.password())
            .env("PGCONNECT_TIMEOUT", "5")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn psql(cluster: &Cluster, sql: &str) -> String {
        try_psql(cluster, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn find_bindir_finds_the_server_binaries() {
        let dir = Cluster::find_bindir().unwrap();
        for program in SERVER_PROGRAMS {
            assert!(dir.join(program).is_file(), "{} has no {program}", dir.display());
        }
    }

    #[test]
    fn paths_are_absolute_and_sidecars_sit_next_to_the_data_folder() {
        let paths = Paths::new(Path::new("some/rel/./pg/")).unwrap();
        assert!(paths.data.is_absolute());
        assert!(paths.data.ends_with("some/rel/pg"));
        assert_eq!(paths.password.file_name().unwrap(), "pg.password");
        assert_eq!(paths.log.file_name().unwrap(), "pg.log");
        assert_eq!(paths.password.parent(), paths.data.parent());
        assert!(Paths::new(Path::new("/")).is_err());
        assert!(Paths::new(Path::new("/tmp/a$b")).is_err());
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(parse_version("15"), Some(vec![15]));
        assert_eq!(parse_version("9.6"), Some(vec![9, 6]));
        assert_eq!(parse_version("15-beta"), None);
    }

    #[test]
    fn fresh_cluster_is_logical_secret_and_keeps_its_data_across_restarts() {
        let dir = TempDir::new("fresh");
        let options = ClusterOptions { fsync: false, ..ClusterOptions::new(dir.0.join("pg")) };
        let mut cluster = Cluster::start(options.clone()).unwrap();
        let port = cluster.port();
        assert_ne!(port, 5432);
        assert_eq!(psql(&cluster, "SHOW wal_level"), "logical");
        assert_eq!(psql(&cluster, "SHOW synchronous_commit"), "on");
        assert_eq!(psql(&cluster, "SHOW fsync"), "off");
        assert_eq!(psql(&cluster, "SHOW listen_addresses"), HOST);
        assert_eq!(psql(&cluster, "SHOW unix_socket_directories"), "");
        assert!(psql(&cluster, "SHOW max_wal_senders").parse::<u32>().unwrap() >= 10);
        assert!(psql(&cluster, "SHOW max_replication_slots").parse::<u32>().unwrap() >= 10);
        assert_eq!(psql(&cluster, "SELECT current_user || ' ' || current_database()"), "sluice sluice");
        assert_eq!(psql(&cluster, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"), "t");

        // The secret: in the URL and the 0600 file, never in Debug.
        let password = cluster.password().to_string();
        assert!(password.len() >= 32);
        assert!(cluster.url().contains(&password));
        assert_eq!(cluster.url(), format!("postgres://sluice:{password}@127.0.0.1:{port}/sluice"));
        assert_eq!(fs::read_to_string(cluster.password_file()).unwrap().trim(), password);
        assert_eq!(mode_of(cluster.password_file()), 0o600);
        assert!(!format!("{cluster:?}").contains(&password));
        assert!(!format!("{cluster:#?}").contains(&password));
        assert!(!dir.0.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.')));
        // A wrong password is refused.
        let wrong = Command::new(cluster.bindir().join("psql"))
            .args(["-X", "-h", HOST, "-U", USER, "-d", DATABASE, "-p", &port.to_string(), "-c", "SELECT 1"])
            .env("PGPASSWORD", "wrong")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!wrong.status.success());

        psql(&cluster, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('before restart')");
        cluster.stop().unwrap();
        cluster.stop().unwrap(); // idempotent
        assert!(!cluster.is_running());
        assert!(try_psql(&cluster, "SELECT 1").is_err());
        assert!(dir.0.join("pg/PG_VERSION").is_file(), "a durable cluster keeps its data");
        drop(cluster);

        let cluster = Cluster::start(options).unwrap();
        assert_eq!(psql(&cluster, "SELECT v FROM kept"), "before restart");
        assert_eq!(cluster.password(), password);
        assert!(fs::read_to_string(cluster.log_file()).unwrap().contains("ready to accept connections"));
    }

    #[test]
    fn template_copies_start_concurrently_and_are_removed_on_stop() {
        let dir = TempDir::new("template");
        // A template of this test's own, so that the two starts race to make it.
        let template = dir.0.join("template");
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let threads: Vec<_> = (0..2)
            .map(|i| {
                let (barrier, root, template) = (barrier.clone(), dir.0.join(format!("c{i}")), template.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    Cluster::start(throwaway(&root, Some(template))).unwrap()
                })
            })
            .collect();
        let mut clusters: Vec<Cluster> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_ne!(clusters[0].port(), clusters[1].port());
        assert_eq!(clusters[0].password(), clusters[1].password(), "copies share the template's password");
        assert_eq!(fs::read_to_string(template.join("password")).unwrap().trim(), clusters[0].password());
        assert_eq!(mode_of(&template.join("password")), 0o600);
        psql(&clusters[0], "CREATE TABLE only_here (v int)");
        assert_eq!(psql(&clusters[0], "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"), "1");
        assert_eq!(psql(&clusters[1], "SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'"), "0");
        for cluster in &clusters {
            assert_eq!(psql(cluster, "SHOW wal_level"), "logical");
            assert_eq!(psql(cluster, "SHOW fsync"), "off");
        }
        // Nothing left behind next to the template (the loser's staging folder is gone).
        let leftovers: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        let data = clusters[0].data_dir().to_path_buf();
        let password_file = clusters[0].password_file().to_path_buf();
        clusters[0].stop().unwrap();
        assert!(!data.exists() && !password_file.exists());
        assert!(!sidecar(&data, "lock").exists() && !sidecar(&data, "log").exists());
        assert!(template.join("data/PG_VERSION").is_file(), "the template stays");
        let data = clusters[1].data_dir().to_path_buf();
        drop(clusters);
        assert!(!data.exists());
    }

    #[test]
    fn shared_template_makes_fast_throwaway_clusters() {
        let dir = TempDir::new("shared");
        // A staging folder left by a dead process (no such process id) is swept away.
        let stale = dir.0.join(".pg.tmp-999999999-0-0");
        fs::create_dir_all(stale.join("data")).unwrap();
        let cluster = Cluster::start(throwaway(&dir.0, Some(shared_template()))).unwrap();
        assert_eq!(psql(&cluster, "SELECT current_database()"), DATABASE);
        assert!(!stale.exists());
    }

    #[test]
    fn a_data_folder_in_use_is_refused() {
        let dir = TempDir::new("in-use");
        let cluster = Cluster::start(throwaway(&dir.0, Some(shared_template()))).unwrap();
        let err = Cluster::start(throwaway(&dir.0, Some(shared_template()))).unwrap_err();
        assert!(format!("{err:#}").contains("in use by another process"), "{err:#}");
        // The refused start removed nothing.
        assert_eq!(psql(&cluster, "SELECT 1"), "1");
    }

    #[test]
    fn a_folder_that_is_not_a_cluster_is_refused_and_kept() {
        let dir = TempDir::new("not-cluster");
        fs::create_dir_all(dir.0.join("pg")).unwrap();
        fs::write(dir.0.join("pg/precious.txt"), "keep me").unwrap();
        let err = Cluster::start(throwaway(&dir.0, None)).unwrap_err();
        assert!(format!("{err:#}").contains("neither empty nor a PostgreSQL cluster"), "{err:#}");
        assert!(dir.0.join("pg/precious.txt").is_file());
    }

    #[test]
    fn a_start_failure_reports_the_server_log() {
        let dir = TempDir::new("bad-setting");
        let mut options = throwaway(&dir.0, Some(shared_template()));
        options.settings.push(("shared_buffers".into(), "not-a-size".into()));
        let err = format!("{:#}", Cluster::start(options).unwrap_err());
        assert!(err.contains("last lines of") && err.contains("shared_buffers"), "{err}");
        assert!(!dir.0.join("pg").exists(), "a throwaway cluster is removed after a failed start");
    }

    #[test]
    fn a_killed_server_and_its_stale_postmaster_pid_do_not_block_a_restart() {
        let dir = TempDir::new("killed");
        let options = ClusterOptions { template: Some(shared_template()), ..ClusterOptions::new(dir.0.join("pg")) };
        let mut cluster = Cluster::start(options.clone()).unwrap();
        psql(&cluster, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)");
        let pid = cluster.pid().unwrap();
        let status = Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        assert!(status.success());
        while process_alive(pid as i32) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dir.0.join("pg/postmaster.pid").exists());
        cluster.stop().unwrap(); // the server is gone already: not an error
        drop(cluster);
        let cluster = Cluster::start(options).unwrap();
        assert_eq!(psql(&cluster, "SELECT v FROM t"), "42");
    }

    #[test]
    fn a_server_left_running_by_a_dead_owner_is_stopped_and_restarted() {
        let dir = TempDir::new("orphan");
        let options = ClusterOptions { template: Some(shared_template()), ..ClusterOptions::new(dir.0.join("pg")) };
        let mut first = Cluster::start(options.clone()).unwrap();
        psql(&first, "CREATE TABLE t (v int); INSERT INTO t VALUES (7)");
        // Play an owner that died with its watchdog: the server runs on, unowned.
        let mut guardian = first.guardian.take().unwrap();
        guardian.kill().unwrap();
        guardian.wait().unwrap();
        first.lock = None;
        let old_pid = first.pid().unwrap();
        first.pid = None; // so that dropping it leaves the server alone
        drop(first);
        assert!(process_alive(old_pid as i32));

        let second = Cluster::start(options).unwrap();
        // Gone at once, but its parent (init) may take a moment to reap it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_alive(old_pid as i32) {
            assert!(Instant::now() < deadline, "the orphan was not stopped");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_ne!(second.pid(), Some(old_pid));
        assert_eq!(psql(&second, "SELECT v FROM t"), "7");
    }

    #[test]
    fn a_lost_password_file_is_replaced_by_a_new_password() {
        let dir = TempDir::new("lost-password");
        let options =
            ClusterOptions { fsync: false, template: Some(shared_template()), ..ClusterOptions::new(dir.0.join("pg")) };
        let cluster = Cluster::start(options.clone()).unwrap();
        let (old, password_file) = (cluster.password().to_string(), cluster.password_file().to_path_buf());
        drop(cluster);
        fs::remove_file(&password_file).unwrap();
        let cluster = Cluster::start(options).unwrap();
        assert_ne!(cluster.password(), old);
        assert_eq!(mode_of(&password_file), 0o600);
        assert_eq!(psql(&cluster, "SELECT 1"), "1");
    }

    const CHILD_ENV: &str = "SLUICE_EMBEDDED_TEST_CHILD_DIR";

    /// Not a test by itself: the child process of the next test. It starts
    /// a throwaway cluster and exits without stopping it.
    #[test]
    fn guardian_child_entry_point() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let cluster = Cluster::start(throwaway(Path::new(&dir), Some(shared_template()))).unwrap();
        println!("SLUICE-CHILD {} {}", cluster.pid().unwrap(), cluster.port());
        std::mem::forget(cluster);
        std::process::exit(0);
    }

    #[test]
    fn the_watchdog_stops_and_removes_the_cluster_when_its_owner_exits() {
        let dir = TempDir::new("watchdog");
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["guardian_child_entry_point", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &dir.0)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("SLUICE-CHILD ").map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("child said: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
        let pid: i32 = line.split(' ').next().unwrap().parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while process_alive(pid) || dir.0.join("pg").exists() {
            assert!(Instant::now() < deadline, "the watchdog did not clean up");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!dir.0.join("pg.password").exists());
    }
}
