//! What scheduling stores encrypted (reasons, notes, decline reasons): under the patient's data
//! key, bound to the table, column and row, so that a ciphertext copied elsewhere does not open.

use carehub_platform::crypto::Envelope;
use uuid::Uuid;

use crate::error::Result;

pub async fn seal(
    crypto: &Envelope,
    subject: Uuid,
    cell: (&str, &str, Uuid),
    text: &str,
) -> Result<Vec<u8>> {
    Ok(crypto.seal_cell(subject, cell, text).await?)
}

pub async fn open(
    crypto: &Envelope,
    subject: Uuid,
    cell: (&str, &str, Uuid),
    sealed: &[u8],
) -> Result<String> {
    Ok(crypto.open_cell(subject, cell, sealed).await?)
}
