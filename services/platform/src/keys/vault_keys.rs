//! The Vault key provider: every key of a service read from KV at start, held in memory and
//! re-read in the background.
//!
//! Requests only ever read the in-memory snapshot. While Vault cannot be read the last snapshot
//! keeps serving for `max_staleness_secs`; past that, [`KeySource::versions`] answers
//! [`KeyError::Stale`] (fail closed) and [`KeySource::status`] reports not serving, until a
//! refresh succeeds again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::config::KeysConfig;
use super::vault::{VaultConn, VaultError};
use super::{KeyError, KeyName, KeySource, KeyStatus, KeyVersions};

/// The keys a service cannot start without (identity also signs tokens).
pub fn required_keys(service: &str) -> Vec<KeyName> {
    let mut names = vec![KeyName::Kek, KeyName::BlindIndex, KeyName::AuditCheckpoint];
    if service == "identity" {
        names.push(KeyName::Signing);
    }
    names
}

struct Snapshot {
    keys: HashMap<KeyName, Arc<KeyVersions>>,
    refreshed: Instant,
    last_error: Option<String>,
}

/// Keys of one service from Vault KV.
pub struct VaultKeys {
    service: String,
    conn: Arc<VaultConn>,
    max_staleness: Duration,
    snapshot: Mutex<Snapshot>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for VaultKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeys")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl Drop for VaultKeys {
    fn drop(&mut self) {
        if let Some(task) = self
            .refresher
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

impl VaultKeys {
    /// Reads every key of `service` (failing when a required one cannot be read) and starts the
    /// background refresh every `refresh_interval_secs`.
    pub async fn start(
        service: &str,
        cfg: &KeysConfig,
        conn: Arc<VaultConn>,
    ) -> Result<Arc<Self>, VaultError> {
        let keys = fetch(&conn, service).await?;
        let this = Arc::new(VaultKeys {
            service: service.to_owned(),
            conn,
            max_staleness: Duration::from_secs(cfg.max_staleness_secs),
            snapshot: Mutex::new(Snapshot {
                keys,
                refreshed: Instant::now(),
                last_error: None,
            }),
            refresher: Mutex::new(None),
        });
        let task = tokio::spawn(refresh_loop(
            Arc::downgrade(&this),
            Duration::from_secs(cfg.refresh_interval_secs.max(1)),
        ));
        *this.refresher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        tracing::info!(service, "keys loaded from Vault");
        Ok(this)
    }

    pub fn connection(&self) -> &Arc<VaultConn> {
        &self.conn
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Renews the token if due and re-reads every key now. On failure the previous snapshot stays
    /// (and ages); the error is kept for [`KeySource::status`].
    pub async fn refresh_now(&self) -> Result<(), VaultError> {
        let result = async {
            if let Err(err) = self.conn.maintain_token().await {
                tracing::warn!(service = %self.service, error = %err, "Vault token upkeep failed");
            }
            fetch(&self.conn, &self.service).await
        }
        .await;
        let mut snap = self.lock();
        match result {
            Ok(keys) => {
                snap.keys = keys;
                snap.refreshed = Instant::now();
                snap.last_error = None;
                Ok(())
            }
            Err(err) => {
                snap.last_error = Some(err.to_string());
                Err(err)
            }
        }
    }
}

async fn fetch(
    conn: &VaultConn,
    service: &str,
) -> Result<HashMap<KeyName, Arc<KeyVersions>>, VaultError> {
    let required = required_keys(service);
    let mut keys = HashMap::new();
    for name in KeyName::ALL {
        let path = name.vault_path(service);
        match conn.read_kv(&path).await {
            Ok(secret) => {
                let versions =
                    KeyVersions::from_kv_data(&secret.data).map_err(|e| VaultError::Malformed {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                keys.insert(name, Arc::new(versions));
            }
            // Optional keys (signing outside identity) may be absent or outside the policy.
            Err(VaultError::NotFound { .. } | VaultError::Denied { .. })
                if !required.contains(&name) => {}
            Err(VaultError::NotFound { path }) => {
                return Err(VaultError::NotFound {
                    path: format!("{path} (create it with `carehub keys init`)"),
                })
            }
            Err(err) => return Err(err),
        }
    }
    Ok(keys)
}

async fn refresh_loop(this: Weak<VaultKeys>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(keys) = this.upgrade() else { break };
        if let Err(err) = keys.refresh_now().await {
            let status = keys.status();
            if status.serving {
                tracing::warn!(
                    service = %keys.service,
                    error = %err,
                    age_secs = status.age.map(|a| a.as_secs()),
                    "key refresh from Vault failed; serving from the cached keys"
                );
            } else {
                tracing::error!(
                    service = %keys.service,
                    error = %err,
                    "key refresh from Vault failed and the cached keys are past their maximum staleness: failing closed"
                );
            }
        }
    }
}

impl KeySource for VaultKeys {
    fn versions(&self, name: KeyName) -> Result<Arc<KeyVersions>, KeyError> {
        let snap = self.lock();
        let age = snap.refreshed.elapsed();
        if age > self.max_staleness {
            return Err(KeyError::Stale {
                age_secs: age.as_secs(),
                max_secs: self.max_staleness.as_secs(),
            });
        }
        snap.keys
            .get(&name)
            .cloned()
            .ok_or(KeyError::Unavailable(name))
    }

    fn status(&self) -> KeyStatus {
        let snap = self.lock();
        let age = snap.refreshed.elapsed();
        KeyStatus {
            provider: "vault",
            serving: age <= self.max_staleness,
            age: Some(age),
            max_staleness: Some(self.max_staleness),
            last_error: snap.last_error.clone(),
        }
    }
}
