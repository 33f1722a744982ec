//! Request checks shared by billing's handlers. Card data is looked for first, in every string
//! field of every request, so that a request carrying a card number is refused before any of
//! it is logged, stored, or fingerprinted for idempotency; the violation names the field and
//! never repeats the value.

use carehub_platform::errors::FieldViolations;
use uuid::Uuid;

use crate::domain::card_data;
use crate::domain::money::{Currency, MAX_AMOUNT_MINOR};

/// Adds a violation for each field that carries card data; `tokens` are fields that hold a
/// processor token (where a bare 3 or 4 digits can only be a security code).
pub fn no_card_data(v: &mut FieldViolations, fields: &[(&str, &str)], tokens: &[&str]) {
    for (field, value) in fields {
        if let Some(found) = card_data::find(value, tokens.contains(field)) {
            v.add(field, found.reason());
        }
    }
}

/// A required id.
pub fn id(v: &mut FieldViolations, field: &str, value: &str) -> Option<Uuid> {
    v.require_uuid(field, value)
}

/// An optional id (empty = none).
pub fn optional_id(v: &mut FieldViolations, field: &str, value: &str) -> Option<Uuid> {
    if value.is_empty() {
        None
    } else {
        v.require_uuid(field, value)
    }
}

/// 1..=64 of `[A-Za-z0-9._-]`.
pub fn price_code(v: &mut FieldViolations, field: &str, value: &str) {
    v.check(
        !value.is_empty()
            && value.len() <= 64
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        field,
        "must be 1 to 64 letters, digits, dots, dashes or underscores",
    );
}

/// An ISO 4217 code billing accepts; empty means `default`.
pub fn currency(v: &mut FieldViolations, field: &str, value: &str, default: Currency) -> Currency {
    if value.is_empty() {
        return default;
    }
    match Currency::parse(value) {
        Some(c) => c,
        None => {
            v.add(
                field,
                "must be an upper-case ISO 4217 code billing accepts (USD, EUR, ...)",
            );
            default
        }
    }
}

/// 1..=MAX_AMOUNT_MINOR (or 0 when `zero_ok`, meaning "all of it").
pub fn amount(v: &mut FieldViolations, field: &str, value: i64, zero_ok: bool) {
    let ok = (zero_ok && value == 0) || (1..=MAX_AMOUNT_MINOR).contains(&value);
    v.check(
        ok,
        field,
        if zero_ok {
            "must be 0 (all of it) or 1 to 100000000 minor units"
        } else {
            "must be 1 to 100000000 minor units"
        },
    );
}

/// A product name or description: 1..=200 characters, no control characters.
pub fn description(v: &mut FieldViolations, field: &str, value: &str) {
    v.require_len(value.trim(), field, 1, 200);
    v.check_free_text(field, value);
}

/// A stable hash of a request (ids and amounts only), binding an idempotency key to it.
pub fn request_hash(rpc: &str, encoded: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(rpc.as_bytes())
        .chain_update([0u8])
        .chain_update(encoded)
        .finalize()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_data_is_named_by_field_and_never_echoed() {
        let mut v = FieldViolations::new();
        no_card_data(
            &mut v,
            &[
                ("processor_token", "4242 4242 4242 4242"),
                ("patient_id", "123"),
                ("x", "cvv 123"),
            ],
            &["processor_token"],
        );
        let found: Vec<(String, String)> = v
            .violations()
            .map(|(f, d)| (f.to_owned(), d.to_owned()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "processor_token");
        assert!(found[0].1.contains("card number"));
        assert_eq!(found[1].0, "x");
        assert!(found
            .iter()
            .all(|(_, d)| !d.contains("4242") && !d.contains("123")));
    }

    #[test]
    fn codes_currencies_and_amounts() {
        let mut v = FieldViolations::new();
        price_code(&mut v, "a", "video-30");
        amount(&mut v, "b", 1, false);
        amount(&mut v, "c", 0, true);
        let usd = Currency::parse("USD").map(|c| currency(&mut v, "d", "", c));
        assert!(v.is_empty());
        assert_eq!(usd.map(|c| c.code), Some("USD"));
        price_code(&mut v, "e", "video 30");
        amount(&mut v, "f", 0, false);
        amount(&mut v, "g", MAX_AMOUNT_MINOR + 1, true);
        amount(&mut v, "h", -1, true);
        if let Some(usd) = Currency::parse("USD") {
            currency(&mut v, "i", "usd", usd);
        }
        let fields: Vec<&str> = v.fields().collect();
        assert_eq!(fields, ["e", "f", "g", "h", "i"]);
    }
}
