//! The chart's content and free text through platform::crypto: sealed under the patient's data
//! key (subject = the patient's user id), bound to the table, column and row it is stored in,
//! so that a ciphertext copied to another row or version does not open.

use std::collections::BTreeMap;

use carehub_platform::crypto::{Envelope, Field};
use carehub_proto::records::v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::domain::sensitivity::Label;
use crate::error::{RecordsError, Result};

/// The row an entry version's content is bound to.
fn version_row(entry: Uuid, version: i64) -> String {
    format!("{entry}/{version}")
}

/// What an entry version's sealed column holds: its content and its sensitivity labels, so
/// that neither is readable in the table.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredVersion {
    #[prost(message, optional, tag = "1")]
    content: Option<pb::EntryContent>,
    #[prost(enumeration = "pb::SensitivityLabel", repeated, tag = "2")]
    labels: Vec<i32>,
}

pub async fn seal_version(
    crypto: &Envelope,
    patient: Uuid,
    (entry, version): (Uuid, i64),
    content: &pb::EntryContent,
    labels: &[Label],
) -> Result<Vec<u8>> {
    let stored = StoredVersion {
        content: Some(content.clone()),
        labels: labels.iter().map(|l| l.to_pb() as i32).collect(),
    };
    let (row, subject) = (version_row(entry, version), patient.to_string());
    let field = Field::new("entry_versions", "content", &row, &subject);
    Ok(crypto.encrypt(&field, &stored.encode_to_vec()).await?)
}

/// The content and labels of a sealed version.
pub async fn open_version(
    crypto: &Envelope,
    patient: Uuid,
    (entry, version): (Uuid, i64),
    sealed: &[u8],
) -> Result<(pb::EntryContent, Vec<Label>)> {
    let (row, subject) = (version_row(entry, version), patient.to_string());
    let field = Field::new("entry_versions", "content", &row, &subject);
    let plain = crypto.decrypt(&field, sealed).await?;
    let corrupt = || {
        RecordsError::Internal(format!(
            "entry {entry} version {version} holds no stored version"
        ))
    };
    let stored = StoredVersion::decode(plain.as_slice()).map_err(|_| corrupt())?;
    let labels = stored
        .labels
        .iter()
        .map(|l| Label::from_pb(*l).ok_or_else(corrupt))
        .collect::<Result<Vec<_>>>()?;
    Ok((stored.content.ok_or_else(corrupt)?, labels))
}

/// What a note's sealed body holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredNote {
    #[prost(string, tag = "1")]
    pub title: String,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(enumeration = "pb::SensitivityLabel", repeated, tag = "3")]
    pub labels: Vec<i32>,
}

impl StoredNote {
    /// Hex SHA-256 of the encoding: what a signature covers.
    pub fn sha256(&self) -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.encode_to_vec()).to_vec()
    }
}

pub async fn seal_note(
    crypto: &Envelope,
    patient: Uuid,
    (note, version): (Uuid, i64),
    body: &StoredNote,
) -> Result<Vec<u8>> {
    let (row, subject) = (version_row(note, version), patient.to_string());
    let field = Field::new("notes", "body", &row, &subject);
    Ok(crypto.encrypt(&field, &body.encode_to_vec()).await?)
}

pub async fn open_note(
    crypto: &Envelope,
    patient: Uuid,
    (note, version): (Uuid, i64),
    sealed: &[u8],
) -> Result<StoredNote> {
    let (row, subject) = (version_row(note, version), patient.to_string());
    let field = Field::new("notes", "body", &row, &subject);
    let plain = crypto.decrypt(&field, sealed).await?;
    StoredNote::decode(plain.as_slice())
        .map_err(|_| RecordsError::Internal(format!("note {note} holds no stored note")))
}

/// Bytes of a document's chunk `seq`.
pub async fn seal_chunk(
    crypto: &Envelope,
    patient: Uuid,
    (document, seq): (Uuid, i32),
    data: &[u8],
) -> Result<Vec<u8>> {
    let (row, subject) = (format!("{document}/{seq}"), patient.to_string());
    Ok(crypto
        .encrypt(&Field::new("document_chunks", "data", &row, &subject), data)
        .await?)
}

pub async fn open_chunk(
    crypto: &Envelope,
    patient: Uuid,
    (document, seq): (Uuid, i32),
    sealed: &[u8],
) -> Result<Vec<u8>> {
    let (row, subject) = (format!("{document}/{seq}"), patient.to_string());
    Ok(crypto
        .decrypt(
            &Field::new("document_chunks", "data", &row, &subject),
            sealed,
        )
        .await?
        .to_vec())
}

/// What a document is (its DocumentInfo), bound to its row.
pub async fn seal_document_info(
    crypto: &Envelope,
    patient: Uuid,
    document: Uuid,
    info: &pb::DocumentInfo,
) -> Result<Vec<u8>> {
    let (row, subject) = (document.to_string(), patient.to_string());
    Ok(crypto
        .encrypt(
            &Field::new("documents", "info", &row, &subject),
            &info.encode_to_vec(),
        )
        .await?)
}

pub async fn open_document_info(
    crypto: &Envelope,
    patient: Uuid,
    document: Uuid,
    sealed: &[u8],
) -> Result<pb::DocumentInfo> {
    let (row, subject) = (document.to_string(), patient.to_string());
    let plain = crypto
        .decrypt(&Field::new("documents", "info", &row, &subject), sealed)
        .await?;
    pb::DocumentInfo::decode(plain.as_slice())
        .map_err(|_| RecordsError::Internal(format!("document {document} holds no info")))
}

/// A grant's label, bound to the grant's row.
pub async fn seal_label(
    crypto: &Envelope,
    patient: Uuid,
    grant: Uuid,
    label: Label,
) -> Result<Vec<u8>> {
    let (row, subject) = (grant.to_string(), patient.to_string());
    let field = Field::new("sensitivity_grants", "label", &row, &subject);
    Ok(crypto.encrypt(&field, &[label.to_pb() as u8]).await?)
}

pub async fn open_label(
    crypto: &Envelope,
    patient: Uuid,
    grant: Uuid,
    sealed: &[u8],
) -> Result<Label> {
    let (row, subject) = (grant.to_string(), patient.to_string());
    let field = Field::new("sensitivity_grants", "label", &row, &subject);
    let plain = crypto.decrypt(&field, sealed).await?;
    match plain.as_slice() {
        [b] => Label::from_pb(i32::from(*b)),
        _ => None,
    }
    .ok_or_else(|| RecordsError::Internal(format!("grant {grant} holds no label")))
}

/// Where a sealed text lives: its table, column and row (the row's id).
pub type Place<'a> = (&'a str, &'a str, Uuid);

/// Free text stored at `place`, sealed under `patient`'s data key and bound to that place.
pub async fn seal_text(
    crypto: &Envelope,
    patient: Uuid,
    place: Place<'_>,
    text: &str,
) -> Result<Vec<u8>> {
    let (table, column, row) = place;
    let (row, subject) = (row.to_string(), patient.to_string());
    Ok(crypto
        .encrypt_str(&Field::new(table, column, &row, &subject), text)
        .await?)
}

pub async fn open_text(
    crypto: &Envelope,
    patient: Uuid,
    place: Place<'_>,
    sealed: &[u8],
) -> Result<String> {
    let (table, column, row) = place;
    let (row, subject) = (row.to_string(), patient.to_string());
    Ok(crypto
        .decrypt_string(&Field::new(table, column, &row, &subject), sealed)
        .await?)
}

/// [`open_text`] of an optional column.
pub async fn open_text_opt(
    crypto: &Envelope,
    patient: Uuid,
    place: Place<'_>,
    sealed: Option<&[u8]>,
) -> Result<String> {
    match sealed {
        Some(s) => open_text(crypto, patient, place, s).await,
        None => Ok(String::new()),
    }
}

pub async fn seal_reason(
    crypto: &Envelope,
    patient: Uuid,
    access: Uuid,
    reason: &str,
) -> Result<Vec<u8>> {
    seal_text(
        crypto,
        patient,
        ("break_glass_accesses", "reason", access),
        reason,
    )
    .await
}

pub async fn open_reason(
    crypto: &Envelope,
    patient: Uuid,
    access: Uuid,
    sealed: &[u8],
) -> Result<String> {
    open_text(
        crypto,
        patient,
        ("break_glass_accesses", "reason", access),
        sealed,
    )
    .await
}

/// What an intake response's sealed column holds. A `BTreeMap`, so that the same answers
/// always encode to the same bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredAnswers {
    #[prost(btree_map = "string, string", tag = "1")]
    answers: BTreeMap<String, String>,
}

/// An intake response's answers (question id -> answer), bound to the response's row.
pub async fn seal_answers(
    crypto: &Envelope,
    patient: Uuid,
    response: Uuid,
    answers: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let (row, subject) = (response.to_string(), patient.to_string());
    let stored = StoredAnswers {
        answers: answers.clone(),
    };
    Ok(crypto
        .encrypt(
            &Field::new("intake_responses", "answers", &row, &subject),
            &stored.encode_to_vec(),
        )
        .await?)
}

pub async fn open_answers(
    crypto: &Envelope,
    patient: Uuid,
    response: Uuid,
    sealed: &[u8],
) -> Result<BTreeMap<String, String>> {
    let (row, subject) = (response.to_string(), patient.to_string());
    let plain = crypto
        .decrypt(
            &Field::new("intake_responses", "answers", &row, &subject),
            sealed,
        )
        .await?;
    StoredAnswers::decode(plain.as_slice())
        .map(|s| s.answers)
        .map_err(|_| RecordsError::Internal(format!("intake response {response} holds no answers")))
}
