//! The chart's content and free text through platform::crypto: sealed under the patient's data
//! key (subject = the patient's user id), bound to the table, column and row it is stored in,
//! so that a ciphertext copied to another row or version does not open.

use carehub_platform::crypto::{Envelope, Field};
use carehub_proto::records::v1 as pb;
use prost::Message;
use uuid::Uuid;

use crate::error::{RecordsError, Result};

/// The row an entry version's content is bound to.
fn version_row(entry: Uuid, version: i64) -> String {
    format!("{entry}/{version}")
}

pub async fn seal_content(
    crypto: &Envelope,
    patient: Uuid,
    entry: Uuid,
    version: i64,
    content: &pb::EntryContent,
) -> Result<Vec<u8>> {
    let (row, subject) = (version_row(entry, version), patient.to_string());
    let field = Field::new("entry_versions", "content", &row, &subject);
    Ok(crypto.encrypt(&field, &content.encode_to_vec()).await?)
}

pub async fn open_content(
    crypto: &Envelope,
    patient: Uuid,
    entry: Uuid,
    version: i64,
    sealed: &[u8],
) -> Result<pb::EntryContent> {
    let (row, subject) = (version_row(entry, version), patient.to_string());
    let field = Field::new("entry_versions", "content", &row, &subject);
    let plain = crypto.decrypt(&field, sealed).await?;
    pb::EntryContent::decode(plain.as_slice()).map_err(|_| {
        RecordsError::Internal(format!(
            "entry {entry} version {version} holds no EntryContent"
        ))
    })
}

pub async fn seal_reason(
    crypto: &Envelope,
    patient: Uuid,
    access: Uuid,
    reason: &str,
) -> Result<Vec<u8>> {
    let (row, subject) = (access.to_string(), patient.to_string());
    let field = Field::new("break_glass_accesses", "reason", &row, &subject);
    Ok(crypto.encrypt_str(&field, reason).await?)
}

pub async fn open_reason(
    crypto: &Envelope,
    patient: Uuid,
    access: Uuid,
    sealed: &[u8],
) -> Result<String> {
    let (row, subject) = (access.to_string(), patient.to_string());
    let field = Field::new("break_glass_accesses", "reason", &row, &subject);
    Ok(crypto.decrypt_string(&field, sealed).await?)
}
