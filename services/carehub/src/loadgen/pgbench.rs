//! The PostgreSQL baseline: pgbench single-row insert and select-only (by primary key)
//! against the same server carehub uses, in a database of its own (`carehub_loadgen_pgbench`,
//! created for the run and dropped after it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use sqlx::Connection as _;

const DATABASE: &str = "carehub_loadgen_pgbench";
const ROWS: i64 = 10_000;

#[derive(Clone, Debug, Serialize)]
pub struct PgbenchResult {
    pub name: String,
    pub clients: usize,
    pub tps: f64,
    pub latency_avg_ms: f64,
    pub failed: u64,
}

/// pgbench on PATH or in the PostgreSQL package's directory.
pub fn find() -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("pgbench");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|d| d.path().join("bin/pgbench"))
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found.pop()
}

/// Runs both pgbench workloads for `duration` each with `clients` connections.
pub async fn run(
    binary: &std::path::Path,
    admin_url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<PgbenchResult>> {
    carehub_platform::db::create_database_if_missing(admin_url, DATABASE).await?;
    let url = carehub_platform::db::url_with_database(admin_url, DATABASE)?;
    let result = measure(binary, &url, clients, duration).await;
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .context("dropping the pgbench database")?;
    result
}

async fn measure(
    binary: &std::path::Path,
    url: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Vec<PgbenchResult>> {
    {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS loadgen_rows (
                id bigserial PRIMARY KEY, v integer NOT NULL, at timestamptz NOT NULL DEFAULT now())",
        )
        .execute(&mut conn)
        .await?;
        sqlx::query("INSERT INTO loadgen_rows (v) SELECT g FROM generate_series(1, $1) g")
            .bind(ROWS)
            .execute(&mut conn)
            .await?;
        sqlx::query("VACUUM ANALYZE loadgen_rows")
            .execute(&mut conn)
            .await?;
    }
    let dir = tempfile_dir()?;
    let insert = dir.join("insert.sql");
    let select = dir.join("select.sql");
    std::fs::write(
        &insert,
        "\\set v random(1, 1000000)\nINSERT INTO loadgen_rows (v) VALUES (:v);\n",
    )?;
    std::fs::write(
        &select,
        format!("\\set id random(1, {ROWS})\nSELECT v FROM loadgen_rows WHERE id = :id;\n"),
    )?;
    let mut out = Vec::new();
    for (name, script) in [("pgbench insert", &insert), ("pgbench select", &select)] {
        out.push(run_one(binary, url, name, script, clients, duration).await?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("carehub-loadgen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn run_one(
    binary: &std::path::Path,
    url: &str,
    name: &str,
    script: &std::path::Path,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<PgbenchResult> {
    let secs = duration.as_secs().max(1);
    // libpq refuses sqlx's URL parameters (statement-cache-capacity, ...): pgbench gets the
    // URL without its query.
    let url = url.split_once('?').map_or(url, |(u, _)| u);
    let out = tokio::process::Command::new(binary)
        .args(["-n", "-M", "prepared", "-j", "2"])
        .arg("-c")
        .arg(clients.max(1).to_string())
        .arg("-T")
        .arg(secs.to_string())
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        anyhow::bail!(
            "{name} failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(name, clients, &text).with_context(|| format!("reading pgbench's output:\n{text}"))
}

fn parse(name: &str, clients: usize, text: &str) -> Option<PgbenchResult> {
    let value_after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
    };
    Some(PgbenchResult {
        name: name.to_owned(),
        clients,
        tps: value_after("tps = ")?,
        latency_avg_ms: value_after("latency average = ")?,
        failed: value_after("number of failed transactions: ").map_or(0, |v| v as u64),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn reads_pgbench_15_output() {
        let text = "transaction type: insert.sql\nnumber of clients: 16\n\
            number of transactions actually processed: 12345\n\
            number of failed transactions: 0 (0.000%)\n\
            latency average = 1.296 ms\n\
            initial connection time = 12.3 ms\n\
            tps = 12345.678901 (without initial connection time)\n";
        let r = parse("pgbench insert", 16, text).unwrap();
        assert!((r.tps - 12345.678901).abs() < 1e-6);
        assert!((r.latency_avg_ms - 1.296).abs() < 1e-9);
        assert_eq!(r.failed, 0);
    }
}
