//! Process-wide counters of events that a service in steady state should not see at all:
//! TLS handshakes, Vault requests, new database connections. They are rendered on every
//! service's `/metrics` (the same values for every service of one process, as under
//! `carehub up`) so that `carehub loadgen` can check, from outside, that a steady state
//! caused none of them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

static TLS_SERVER_OK: AtomicU64 = AtomicU64::new(0);
static TLS_SERVER_FAILED: AtomicU64 = AtomicU64::new(0);
static TLS_CLIENT: AtomicU64 = AtomicU64::new(0);
static VAULT_REQUESTS: AtomicU64 = AtomicU64::new(0);
static DB_CONNECTIONS_OPENED: AtomicU64 = AtomicU64::new(0);

/// A TLS handshake on a server port finished (`ok`) or failed / timed out.
pub fn tls_server_handshake(ok: bool) {
    let c = if ok {
        &TLS_SERVER_OK
    } else {
        &TLS_SERVER_FAILED
    };
    c.fetch_add(1, Ordering::Relaxed);
}

/// A client connection (to another service) started a TLS handshake.
pub fn tls_client_handshake() {
    TLS_CLIENT.fetch_add(1, Ordering::Relaxed);
}

/// A request was sent to Vault.
pub fn vault_request() {
    VAULT_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// A pool opened a new database connection.
pub fn db_connection_opened() {
    DB_CONNECTIONS_OPENED.fetch_add(1, Ordering::Relaxed);
}

/// Appends the counters in the Prometheus text format.
pub fn render(out: &mut String) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    out.push_str(
        "# HELP carehub_tls_handshakes_total TLS handshakes of this process, by side and result.\n",
    );
    out.push_str("# TYPE carehub_tls_handshakes_total counter\n");
    let _ = writeln!(
        out,
        "carehub_tls_handshakes_total{{side=\"server\",result=\"ok\"}} {}",
        get(&TLS_SERVER_OK)
    );
    let _ = writeln!(
        out,
        "carehub_tls_handshakes_total{{side=\"server\",result=\"failed\"}} {}",
        get(&TLS_SERVER_FAILED)
    );
    let _ = writeln!(
        out,
        "carehub_tls_handshakes_total{{side=\"client\",result=\"started\"}} {}",
        get(&TLS_CLIENT)
    );
    out.push_str("# HELP carehub_vault_requests_total Requests this process sent to Vault.\n");
    out.push_str("# TYPE carehub_vault_requests_total counter\n");
    let _ = writeln!(out, "carehub_vault_requests_total {}", get(&VAULT_REQUESTS));
    out.push_str(
        "# HELP carehub_db_connections_opened_total Database connections this process opened.\n",
    );
    out.push_str("# TYPE carehub_db_connections_opened_total counter\n");
    let _ = writeln!(
        out,
        "carehub_db_connections_opened_total {}",
        get(&DB_CONNECTIONS_OPENED)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_as_prometheus_counters() {
        db_connection_opened();
        tls_server_handshake(true);
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("# TYPE carehub_tls_handshakes_total counter"),
            "{out}"
        );
        assert!(
            out.contains("carehub_tls_handshakes_total{side=\"server\",result=\"ok\"} "),
            "{out}"
        );
        assert!(out.contains("carehub_vault_requests_total "), "{out}");
        let opened = out
            .lines()
            .find_map(|l| l.strip_prefix("carehub_db_connections_opened_total "))
            .and_then(|v| v.parse::<u64>().ok());
        assert!(opened.is_some_and(|n| n >= 1), "{out}");
    }
}
