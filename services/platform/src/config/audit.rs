//! `[server.audit]`: how queued events are sealed into the chain, where committed audit events
//! are shipped and how often the trail is checkpointed. Re-exported from `crate::audit`, which runs the sink and the checkpointer.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[server.audit] sink`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    #[default]
    None,
    Stdout,
    File,
}

/// `[server.audit]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// JSON-lines sink for SIEM shipping: `none`, `stdout` or `file`.
    pub sink: SinkKind,
    /// The file of `sink = "file"` (appended to).
    pub sink_file: Option<PathBuf>,
    /// Sign a checkpoint after this many new rows.
    pub checkpoint_every: u64,
    /// ... or once the newest unsigned rows are this old.
    pub checkpoint_interval_secs: u64,
    /// How often the background task looks for checkpoints and sink work.
    pub poll_interval_ms: u64,
    /// Most queued events the sequencer seals in one transaction.
    pub seal_batch: u32,
    /// How long the sequencer pauses once the queue is empty.
    pub seal_interval_ms: u64,
    /// Queued events older than this are sealing lag: reported by `carehub audit verify`.
    pub sealing_lag_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            sink: SinkKind::None,
            sink_file: None,
            checkpoint_every: 1000,
            checkpoint_interval_secs: 60,
            poll_interval_ms: 1000,
            seal_batch: 1000,
            seal_interval_ms: 50,
            sealing_lag_secs: 5,
        }
    }
}

impl AuditConfig {
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.sink == SinkKind::File && self.sink_file.is_none() {
            problems.push(
                "server.audit.sink_file is required when server.audit.sink = \"file\"".to_owned(),
            );
        }
        if self.checkpoint_every == 0 {
            problems.push("server.audit.checkpoint_every must be > 0".to_owned());
        }
        if self.checkpoint_interval_secs == 0 {
            problems.push("server.audit.checkpoint_interval_secs must be > 0".to_owned());
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            problems.push("server.audit.poll_interval_ms must be within 10..=60000".to_owned());
        }
        if !(1..=10_000).contains(&self.seal_batch) {
            problems.push("server.audit.seal_batch must be within 1..=10000".to_owned());
        }
        if !(1..=10_000).contains(&self.seal_interval_ms) {
            problems.push("server.audit.seal_interval_ms must be within 1..=10000".to_owned());
        }
        if self.sealing_lag_secs == 0 {
            problems.push("server.audit.sealing_lag_secs must be > 0".to_owned());
        }
    }
}
