//! The shape of what users write: subjects, bodies, client message ids, report details.

use carehub_platform::errors::FieldViolations;

pub const MAX_SUBJECT: usize = 200;
pub const MAX_BODY: usize = 10_000;
pub const MAX_DETAILS: usize = 1_000;
pub const MAX_CLIENT_ID: usize = 64;
pub const MAX_ATTACHMENTS: usize = 10;
/// Members of a staff conversation besides its creator.
pub const MAX_STAFF_MEMBERS: usize = 50;

/// A client message id: 1..=64 of `[A-Za-z0-9_-]`.
pub fn check_client_id(v: &mut FieldViolations, field: &str, id: &str) {
    v.check(
        (1..=MAX_CLIENT_ID).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        field,
        "must be 1 to 64 characters of A-Z, a-z, 0-9, '_' and '-'",
    );
}

/// Text of at most `max` characters, without control characters other than newlines and tabs.
pub fn check_text(v: &mut FieldViolations, field: &str, text: &str, max: usize) {
    v.check(
        text.chars().count() <= max,
        field,
        &format!("must be at most {max} characters"),
    );
    v.check_free_text(field, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_and_texts_are_checked_by_shape_and_length() {
        let mut v = FieldViolations::new();
        check_client_id(&mut v, "a", "msg-01_A");
        check_text(&mut v, "b", "Hello,\nDr. Lee", MAX_BODY);
        assert!(v.is_empty());
        for bad in ["", "has space", "ü", &"x".repeat(65)] {
            let mut v = FieldViolations::new();
            check_client_id(&mut v, "client_message_id", bad);
            assert_eq!(
                v.fields().collect::<Vec<_>>(),
                ["client_message_id"],
                "{bad:?}"
            );
        }
        let mut v = FieldViolations::new();
        check_text(&mut v, "body", &"é".repeat(MAX_BODY + 1), MAX_BODY);
        check_text(&mut v, "subject", "bell\u{7}", MAX_SUBJECT);
        assert_eq!(v.fields().collect::<Vec<_>>(), ["body", "subject"]);
    }
}
