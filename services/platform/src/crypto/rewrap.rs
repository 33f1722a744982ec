//! Operator functions over a service's key table: rewrap data keys under the newest KEK, and
//! count them per KEK version (`carehub keys rewrap` / `carehub keys status`).

use std::ops::ControlFlow;

use serde::Serialize;
use sqlx::PgPool;

use super::{cipher_of, format, store, CryptoError};
use crate::keys::{KeyName, KeySource};

/// Where a rewrap stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RewrapProgress {
    /// The KEK version keys are moved to.
    pub target_kek_version: u32,
    /// Keys under older KEK versions when this run started.
    pub total: u64,
    /// Keys this run rewrapped so far.
    pub rewrapped: u64,
    /// Whether no key under an older KEK version is left.
    pub done: bool,
}

/// Rewraps every data key of `service` still under an older KEK version with the current KEK,
/// in batches of 500, without touching encrypted data. Each batch commits on its own, so an
/// interrupted run (crash, or `progress` returning `Break`) resumes where it stopped; running
/// it again when nothing is left does nothing.
pub async fn rewrap(
    pool: &PgPool,
    service: &str,
    keys: &dyn KeySource,
    progress: impl FnMut(&RewrapProgress) -> ControlFlow<()>,
) -> Result<RewrapProgress, CryptoError> {
    rewrap_in_batches(pool, service, keys, 500, progress).await
}

/// [`rewrap`] with a chosen batch size.
pub async fn rewrap_in_batches(
    pool: &PgPool,
    service: &str,
    keys: &dyn KeySource,
    batch_size: u32,
    mut progress: impl FnMut(&RewrapProgress) -> ControlFlow<()>,
) -> Result<RewrapProgress, CryptoError> {
    let (target, kek) = keys.current(KeyName::Kek)?;
    let new_kek = cipher_of(kek.as_bytes())?;
    let mut state = RewrapProgress {
        target_kek_version: target,
        total: store::count_to_rewrap(pool, service, target).await?,
        rewrapped: 0,
        done: false,
    };
    loop {
        let batch = store::keys_to_rewrap(pool, service, target, batch_size.max(1)).await?;
        if batch.is_empty() {
            state.done = true;
            // The run is over either way; the callback only learns that it finished.
            let _ = progress(&state);
            return Ok(state);
        }
        let mut tx = pool.begin().await?;
        for (subject, stored) in &batch {
            let old = keys.version(KeyName::Kek, stored.kek_version)?;
            let key = format::unwrap_key(
                &cipher_of(old.as_bytes())?,
                service,
                subject,
                stored.version,
                &stored.wrapped,
            )
            .ok_or_else(|| CryptoError::Unwrap {
                subject: subject.clone(),
                version: stored.version,
                kek_version: stored.kek_version,
            })?;
            let wrapped = format::wrap_key(&new_kek, service, subject, stored.version, &key)
                .map_err(|_| CryptoError::Invalid("wrap failed".into()))?;
            let changed = store::replace_wrapped(
                &mut tx,
                service,
                subject,
                stored.version,
                stored.kek_version,
                target,
                &wrapped,
            )
            .await?;
            if changed {
                state.rewrapped += 1;
            }
        }
        tx.commit().await?;
        if progress(&state).is_break() {
            return Ok(state);
        }
    }
}

/// Data keys of one service per KEK version, for `carehub keys status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataKeyStats {
    /// (KEK version, data keys wrapped under it), ascending.
    pub by_kek_version: Vec<(u32, u64)>,
    /// Subjects with keys (not shredded).
    pub subjects: u64,
    /// Subjects whose keys were destroyed.
    pub shredded_subjects: u64,
}

pub async fn data_key_stats(pool: &PgPool, service: &str) -> Result<DataKeyStats, CryptoError> {
    let (by_kek_version, subjects, shredded_subjects) = store::stats(pool, service).await?;
    Ok(DataKeyStats {
        by_kek_version,
        subjects,
        shredded_subjects,
    })
}
