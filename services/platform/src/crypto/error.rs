//! What can go wrong in envelope encryption, said without plaintext, key material or PHI: the
//! messages name tables, columns, row and subject ids, and key versions only.

use carehub_proto::common::v1::ErrorReason;
use tonic::{Code, Status};

use crate::errors;
use crate::keys::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A key this service needs is not in memory (Vault never answered, stale, or the version
    /// was destroyed).
    #[error("key source: {0}")]
    Keys(#[from] KeyError),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The bytes are not a carehub ciphertext (too short, unknown format version).
    #[error("{table}.{column} of row {row} is not a carehub ciphertext: {reason}")]
    Malformed {
        table: String,
        column: String,
        row: String,
        reason: &'static str,
    },
    /// AES-GCM refused the ciphertext: it was altered, or it was written for another service,
    /// table, column, row or subject and copied here.
    #[error(
        "{table}.{column} of row {row} failed authentication: the ciphertext was altered or \
         belongs to another row, column, subject or service"
    )]
    Authentication {
        table: String,
        column: String,
        row: String,
    },
    /// The ciphertext names a data-key version that the subject never had.
    #[error("subject {subject} has no data key version {version}")]
    UnknownDataKey { subject: String, version: u32 },
    /// The subject's data keys were destroyed on purpose: its data is gone for good.
    #[error("subject {subject} was crypto-shredded: its data keys are destroyed and its data is unreadable")]
    Shredded { subject: String },
    /// The stored data key does not open under the KEK version it claims (wrong KEK, or the
    /// key row was tampered with).
    #[error(
        "data key version {version} of subject {subject} does not unwrap under KEK version \
         {kek_version}: wrong key-encryption key or altered key row"
    )]
    Unwrap {
        subject: String,
        version: u32,
        kek_version: u32,
    },
    /// Other writers kept winning the race to create or reserve this subject's data key.
    #[error("could not obtain a data key for subject {subject} after {attempts} attempts")]
    Contended { subject: String, attempts: u32 },
    /// A caller bug (empty identifier, bad configuration): never user input.
    #[error("invalid use of platform::crypto: {0}")]
    Invalid(String),
}

impl CryptoError {
    /// The gRPC status a handler answers with. Integrity failures are INTERNAL (the client can
    /// do nothing about them; the log has the detail), an unavailable key store UNAVAILABLE, and
    /// a shredded subject FAILED_PRECONDITION.
    pub fn to_status(&self) -> Status {
        match self {
            CryptoError::Keys(_) => errors::status(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "encryption keys are unavailable; retry later",
            ),
            CryptoError::Db(_) => errors::status(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "the database is unavailable; retry later",
            ),
            CryptoError::Shredded { subject } => errors::precondition(
                ErrorReason::StateConflict,
                "SUBJECT_SHREDDED",
                subject,
                "the subject's data was erased (its keys are destroyed)",
            ),
            CryptoError::Contended { .. } => errors::status(
                Code::Unavailable,
                ErrorReason::Unavailable,
                "encryption key busy; retry later",
            ),
            CryptoError::Malformed { .. }
            | CryptoError::Authentication { .. }
            | CryptoError::UnknownDataKey { .. }
            | CryptoError::Unwrap { .. }
            | CryptoError::Invalid(_) => errors::internal("encrypted field"),
        }
    }
}
