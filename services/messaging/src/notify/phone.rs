//! Phone numbers as the ledger and the channels see them: E.164 only (what identity verifies
//! and what Twilio sends in `From`), and never in clear at rest — the ledger finds a number by
//! its blind index and keeps a sealed copy.

use carehub_platform::crypto::{Envelope, Normalization};

use crate::error::Result;

/// The blind-index scope of the ledger's numbers (part of the index: never to change).
pub const SCOPE: &str = "sms_numbers.phone";

/// `+` and 8 to 15 digits, the first not 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// The index to store for `phone`, under the current blind-index key.
pub fn index(crypto: &Envelope, phone: &str) -> Result<Vec<u8>> {
    Ok(crypto
        .blind_index()
        .compute(SCOPE, Normalization::Phone, phone)?)
}

/// The indexes `phone` may be stored under (one per held key version, current first).
pub fn candidates(crypto: &Envelope, phone: &str) -> Result<Vec<Vec<u8>>> {
    Ok(crypto
        .blind_index()
        .candidates(SCOPE, Normalization::Phone, phone)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e164() {
        for ok in ["+15550100000", "+4930123456", "+12345678"] {
            assert!(is_e164(ok), "{ok}");
        }
        for bad in [
            "15550100000",
            "+0123456789",
            "+1 555 010 0000",
            "+1234567",
            "+1234567890123456",
            "",
            "+",
            "+1555abc0000",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
