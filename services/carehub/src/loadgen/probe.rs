//! What is read around a steady state: the services' `/metrics` counters (Vault requests, TLS
//! handshakes, new database connections), and CPU time of this process, of the server process
//! and of PostgreSQL (utime + stime from `/proc`, the same figures `getrusage` reports, read
//! without unsafe code and also for other processes).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// The `/metrics` counters that a steady state must leave unchanged.
pub const STEADY_COUNTERS: [(&str, &str); 3] = [
    ("vault_requests", "carehub_vault_requests_total"),
    ("tls_handshakes", "carehub_tls_handshakes_total"),
    (
        "db_connections_opened",
        "carehub_db_connections_opened_total",
    ),
];

/// `GET /metrics` from an admin address (`host:port` or `http://host:port`).
pub async fn scrape(admin: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = admin
        .strip_prefix("http://")
        .unwrap_or(admin)
        .trim_end_matches('/');
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("GET http://{addr}/metrics timed out"))??;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => anyhow::bail!("GET http://{addr}/metrics did not answer 200"),
    }
}

/// The sum of every series of `name` (None when the family is absent).
pub fn sum_family(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(b' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// The steady-state counters read from every admin address, by address (an address that did
/// not answer is absent; a family it does not render is absent from its map).
#[derive(Clone, Debug, Default)]
pub struct Counters(BTreeMap<String, Reading>);

/// One address's counters, by key of [`STEADY_COUNTERS`].
type Reading = BTreeMap<&'static str, f64>;

pub async fn counters(admins: &[String]) -> Counters {
    let mut out = BTreeMap::new();
    for admin in admins {
        let Ok(text) = scrape(admin).await else {
            continue;
        };
        let read = STEADY_COUNTERS
            .iter()
            .filter_map(|(key, family)| Some((*key, sum_family(&text, family)?)))
            .collect();
        out.insert(admin.clone(), read);
    }
    Counters(out)
}

/// What changed between two readings; `None` where a counter could not be read.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SteadyDelta {
    pub vault_requests: Option<f64>,
    pub tls_handshakes: Option<f64>,
    pub db_connections_opened: Option<f64>,
}

impl SteadyDelta {
    /// The changes summed over the processes behind the addresses. The counters are
    /// process-wide: every service of one process (`carehub up`) renders the same values, so
    /// addresses that read exactly the same before and after count once, not once per service.
    pub fn between(before: &Counters, after: &Counters) -> Self {
        let mut seen: Vec<(&Reading, &Reading)> = Vec::new();
        let mut sums: BTreeMap<&str, f64> = BTreeMap::new();
        for (admin, b) in &before.0 {
            let Some(a) = after.0.get(admin) else {
                continue;
            };
            if seen.contains(&(b, a)) {
                continue;
            }
            seen.push((b, a));
            for (key, _) in STEADY_COUNTERS {
                if let (Some(x), Some(y)) = (b.get(key), a.get(key)) {
                    *sums.entry(key).or_insert(0.0) += y - x;
                }
            }
        }
        let d = |k: &str| sums.get(k).copied();
        Self {
            vault_requests: d("vault_requests"),
            tls_handshakes: d("tls_handshakes"),
            db_connections_opened: d("db_connections_opened"),
        }
    }

    pub fn all_zero(&self) -> bool {
        [
            self.vault_requests,
            self.tls_handshakes,
            self.db_connections_opened,
        ]
        .iter()
        .all(|v| v.is_none_or(|v| v == 0.0))
    }
}

/// Clock ticks per second of `/proc/*/stat` times (USER_HZ: 100 on every Linux ABI carehub
/// runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// (utime + stime) in seconds, and the parent pid, from a `/proc/<pid>/stat` line.
fn parse_stat(text: &str) -> Option<(f64, u32, String)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // After "pid (comm) ": state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(((utime + stime) / TICKS_PER_SEC, ppid, comm))
}

fn stat_of(path: &Path) -> Option<(f64, u32, String)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

/// CPU seconds used so far by this process, and by its threads named `excluded` (the echo
/// server's runtime) separately.
pub fn self_cpu(excluded: &str) -> (f64, f64) {
    let total = stat_of(Path::new("/proc/self/stat")).map_or(0.0, |s| s.0);
    let mut other = 0.0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Some((cpu, _, comm)) = stat_of(&t.path().join("stat")) {
                if comm.starts_with(excluded) {
                    other += cpu;
                }
            }
        }
    }
    (total, other)
}

/// CPU seconds used so far by process `pid`.
pub fn process_cpu(pid: u32) -> Option<f64> {
    stat_of(&Path::new("/proc").join(pid.to_string()).join("stat")).map(|s| s.0)
}

/// CPU seconds used so far by process `pid` and its children (a postmaster and its backends).
pub fn tree_cpu(pid: u32) -> Option<f64> {
    let mut total = process_cpu(pid)?;
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let is_pid = p
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()));
            if !is_pid {
                continue;
            }
            if let Some((cpu, ppid, _)) = stat_of(&p.path().join("stat")) {
                if ppid == pid {
                    total += cpu;
                }
            }
        }
    }
    Some(total)
}

/// Resident memory of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let text =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sums_every_series_of_a_family() {
        let text = "# TYPE carehub_tls_handshakes_total counter\n\
                    carehub_tls_handshakes_total{side=\"server\",result=\"ok\"} 4\n\
                    carehub_tls_handshakes_total{side=\"client\",result=\"started\"} 1\n\
                    carehub_tls_handshakes_total_other 9\n\
                    carehub_vault_requests_total 0\n";
        assert_eq!(sum_family(text, "carehub_tls_handshakes_total"), Some(5.0));
        assert_eq!(sum_family(text, "carehub_vault_requests_total"), Some(0.0));
        assert_eq!(
            sum_family(text, "carehub_db_connections_opened_total"),
            None
        );
    }

    fn reading(admins: &[(&str, [f64; 3])]) -> Counters {
        Counters(
            admins
                .iter()
                .map(|(admin, values)| {
                    let keys = STEADY_COUNTERS.iter().map(|(k, _)| *k);
                    (
                        (*admin).to_owned(),
                        keys.zip(values.iter().copied()).collect(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn services_of_one_process_count_once_and_processes_add_up() {
        // identity and records in one process (`carehub up`): the same process-wide values.
        let before = reading(&[("id", [0.0, 10.0, 20.0]), ("rec", [0.0, 10.0, 20.0])]);
        let after = reading(&[("id", [0.0, 10.0, 24.0]), ("rec", [0.0, 10.0, 24.0])]);
        let d = SteadyDelta::between(&before, &after);
        assert_eq!(
            (d.vault_requests, d.tls_handshakes, d.db_connections_opened),
            (Some(0.0), Some(0.0), Some(4.0))
        );
        // Two processes: their changes add up; an address that stopped answering is left out.
        let before = reading(&[
            ("a", [0.0, 3.0, 20.0]),
            ("b", [0.0, 5.0, 20.0]),
            ("c", [1.0; 3]),
        ]);
        let after = reading(&[("a", [0.0, 4.0, 21.0]), ("b", [0.0, 5.0, 22.0])]);
        let d = SteadyDelta::between(&before, &after);
        assert_eq!(
            (d.vault_requests, d.tls_handshakes, d.db_connections_opened),
            (Some(0.0), Some(1.0), Some(3.0))
        );
        assert!(!d.all_zero());
        let none = SteadyDelta::between(&Counters::default(), &after);
        assert!(none.db_connections_opened.is_none() && none.all_zero());
    }

    #[test]
    fn reads_cpu_of_a_stat_line_with_spaces_in_the_name() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 1 0";
        let (cpu, ppid, comm) = parse_stat(line).unwrap();
        assert_eq!(ppid, 7);
        assert_eq!(comm, "a (b) c");
        assert!((cpu - 3.0).abs() < 1e-9);
        assert!(self_cpu("none").0 >= 0.0);
    }
}
