//! What messaging stores encrypted, through platform::crypto: under the data key of the
//! conversation's crypto subject (the patient, or a staff conversation's own id), bound to the
//! table, column and row, so that a ciphertext copied elsewhere does not open.

use carehub_platform::crypto::{Envelope, Field};
use uuid::Uuid;

use crate::error::{MessagingError, Result};

pub async fn seal(
    crypto: &Envelope,
    subject: Uuid,
    (table, column, row): (&str, &str, Uuid),
    text: &str,
) -> Result<Vec<u8>> {
    let (row, subject) = (row.to_string(), subject.to_string());
    let field = Field::new(table, column, &row, &subject);
    Ok(crypto.encrypt(&field, text.as_bytes()).await?)
}

pub async fn open(
    crypto: &Envelope,
    subject: Uuid,
    (table, column, row): (&str, &str, Uuid),
    sealed: &[u8],
) -> Result<String> {
    let (row_s, subject) = (row.to_string(), subject.to_string());
    let field = Field::new(table, column, &row_s, &subject);
    let plain = crypto.decrypt(&field, sealed).await?;
    String::from_utf8(plain.to_vec())
        .map_err(|_| MessagingError::Internal(format!("{table}.{column} of {row} is not text")))
}
