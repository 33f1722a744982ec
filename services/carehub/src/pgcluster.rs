//! A private PostgreSQL cluster for `carehub up`, initialized and started from the installed
//! PostgreSQL binaries (data under `<data-dir>/postgres`), stopped when carehub stops.
//!
//! PostgreSQL refuses to run as root; when carehub runs as root the cluster runs as the
//! `postgres` system user (created by Debian's package) through `runuser`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};

pub struct PgCluster {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    pub port: u16,
    as_postgres_user: bool,
}

/// Finds `initdb` and `pg_ctl`: next to each other on PATH, else the newest /usr/lib/postgresql/N/bin.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates.reverse();
    if let Ok(path) = std::env::var("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    candidates
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file() && d.join("postgres").is_file())
        .context("PostgreSQL server binaries (initdb, pg_ctl) not found; install the `postgresql` package (scripts/dev.sh does) or set --database-url")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgCluster {
    pub fn new(data_root: &Path, port: u16) -> anyhow::Result<Self> {
        Ok(Self {
            bin_dir: find_bin_dir()?,
            data_dir: std::path::absolute(data_root.join("postgres"))?,
            port,
            as_postgres_user: is_root(),
        })
    }

    fn command(&self, program: &str) -> Command {
        let bin = self.bin_dir.join(program);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn run(&self, mut cmd: Command, what: &str) -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!(
                "{what} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Creates the cluster on first use.
    pub fn init_if_needed(&self) -> anyhow::Result<()> {
        if self.data_dir.join("PG_VERSION").exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.data_dir)?;
        if self.as_postgres_user {
            self.run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(&self.data_dir);
                    c
                },
                "chown of the data directory",
            )?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
        ]);
        self.run(cmd, "initdb")
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let log = self.data_dir.join("server.log");
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .arg("-w")
            .arg("-o")
            // Each service keeps a warm pool (`up` opens them all at start: 5 x 16 today) beside
            // its listener, sequencer and relays, and bench.sh's pgbench and audit scenarios
            // connect too: PostgreSQL's default of 100 ran out when scheduling joined.
            .arg(format!(
                "-p {} -c listen_addresses=127.0.0.1 -c max_connections=300 -k {}",
                self.port,
                self.data_dir.display()
            ))
            .arg("start");
        self.run(cmd, "pg_ctl start")
            .with_context(|| format!("see {}", log.display()))
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"]);
        self.run(cmd, "pg_ctl stop")
    }

    /// The superuser's URL: over the cluster's Unix socket (in its data directory) when its
    /// path fits the kernel's limit, else over TCP on 127.0.0.1.
    ///
    /// The services share the machine with this cluster, so the socket spares each query the
    /// loopback TCP stack on both ends: perf put a fifth of identity's CPU in `send()` to
    /// PostgreSQL over 127.0.0.1 under load.
    pub fn admin_url(&self) -> String {
        match self.socket_dir() {
            Some(dir) => format!(
                "postgres://postgres@localhost:{}/postgres?host={}",
                self.port,
                percent_encode(&dir)
            ),
            None => format!("postgres://postgres@127.0.0.1:{}/postgres", self.port),
        }
    }

    /// The directory of the cluster's Unix socket, if its socket path is short enough to
    /// connect to (`sun_path` holds 108 bytes with its terminating NUL).
    fn socket_dir(&self) -> Option<String> {
        let dir = self.data_dir.to_str()?.to_owned();
        let socket = format!("{dir}/.s.PGSQL.{}", self.port);
        (cfg!(unix) && socket.len() < 108).then_some(dir)
    }

    pub fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("PostgreSQL did not start listening on port {}", self.port)
    }
}

/// `path` with every byte outside `[A-Za-z0-9_.~-]` percent-encoded, for a URL's query.
fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3);
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(data_dir: &str) -> PgCluster {
        PgCluster {
            bin_dir: PathBuf::from("/nonexistent"),
            data_dir: PathBuf::from(data_dir),
            port: 55432,
            as_postgres_user: false,
        }
    }

    #[test]
    fn the_services_reach_the_cluster_over_its_socket_when_the_path_fits() {
        let url = cluster("/work/my repo/.carehub/postgres").admin_url();
        assert_eq!(
            url,
            "postgres://postgres@localhost:55432/postgres?host=%2Fwork%2Fmy%20repo%2F.carehub%2Fpostgres"
        );
        let options: sqlx::postgres::PgConnectOptions =
            url.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            options.get_socket(),
            Some(&PathBuf::from("/work/my repo/.carehub/postgres"))
        );
        // What the services get: the same socket, another database.
        let service = carehub_platform::db::url_with_database(&url, "carehub_records")
            .unwrap_or_else(|e| panic!("{e}"));
        let options: sqlx::postgres::PgConnectOptions =
            service.parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            options.get_socket(),
            Some(&PathBuf::from("/work/my repo/.carehub/postgres"))
        );
        assert_eq!(options.get_database(), Some("carehub_records"));
    }

    #[test]
    fn a_socket_path_too_long_for_the_kernel_falls_back_to_tcp() {
        let deep = format!("/{}/postgres", "d".repeat(100));
        assert_eq!(
            cluster(&deep).admin_url(),
            "postgres://postgres@127.0.0.1:55432/postgres"
        );
    }
}
