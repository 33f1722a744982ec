//! Card data has no business here: billing takes processor tokens only. This detector finds
//! what looks like a primary account number (12 to 19 digits, optionally grouped by spaces or
//! dashes, passing the Luhn check) or a card security code, so that the request is refused
//! before anything of it is logged, stored, or fingerprinted for idempotency.

/// What was found (the value itself is never repeated, not even in the error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardData {
    CardNumber,
    SecurityCode,
}

impl CardData {
    /// The field violation's description.
    pub fn reason(self) -> &'static str {
        match self {
            CardData::CardNumber => {
                "looks like a card number: send the processor's token, never card data"
            }
            CardData::SecurityCode => {
                "looks like a card security code: send the processor's token, never card data"
            }
        }
    }
}

/// Whether `value` (a field of a request) carries card data. `expects_token` is set for fields
/// that hold a processor token, where a bare 3- or 4-digit value can only be a security code.
pub fn find(value: &str, expects_token: bool) -> Option<CardData> {
    // An id is an id: a UUID's digit groups can line up into a Luhn-valid run.
    if uuid::Uuid::try_parse(value.trim()).is_ok() {
        return None;
    }
    if has_card_number(value) {
        return Some(CardData::CardNumber);
    }
    let trimmed = value.trim();
    if expects_token
        && (3..=4).contains(&trimmed.len())
        && trimmed.bytes().all(|b| b.is_ascii_digit())
    {
        return Some(CardData::SecurityCode);
    }
    if labelled_security_code(value) {
        return Some(CardData::SecurityCode);
    }
    None
}

/// A run of 12..=19 digits that passes Luhn. Spaces or dashes may separate groups of 3 to 6
/// digits, as printed card numbers are grouped (4-4-4-4, Amex 4-6-5); any other separator, or
/// a group of another length before one, ends the run. Longer runs are not card numbers (and a
/// window of one passes Luhn one time in ten).
fn has_card_number(value: &str) -> bool {
    let mut run: Vec<u8> = Vec::new();
    let mut group = 0usize;
    let flush = |run: &mut Vec<u8>| {
        let found = (12..=19).contains(&run.len()) && luhn_valid(run);
        run.clear();
        found
    };
    for b in value.bytes() {
        if b.is_ascii_digit() {
            run.push(b - b'0');
            group += 1;
            continue;
        }
        // A separator after a group keeps the run going; whatever follows it decides (a
        // non-digit there flushes the run as any other character does).
        let joins = (b == b' ' || b == b'-') && (3..=6).contains(&group);
        group = 0;
        if !joins && flush(&mut run) {
            return true;
        }
    }
    flush(&mut run)
}

/// A digit doubled, its digits summed (7 -> 14 -> 5): Luhn's every-second-digit step.
const DOUBLED: [u32; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];

/// The Luhn (mod 10) check every card number passes.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = usize::from(d.min(9));
            if i % 2 == 1 {
                DOUBLED[d]
            } else {
                d as u32
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// "cvv 123", "CVC: 1234", "security code is 123", "cvv2=123": a label, then within a few
/// characters a run of exactly 3 or 4 digits.
fn labelled_security_code(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    const LABELS: [&str; 6] = ["cvv", "cvc", "csc", "cid", "security code", "card code"];
    LABELS.iter().any(|label| {
        lower.match_indices(label).any(|(at, _)| {
            let rest = &lower[at + label.len()..];
            let rest = rest.strip_prefix('2').unwrap_or(rest);
            let Some(start) = rest.find(|c: char| c.is_ascii_digit()) else {
                return false;
            };
            let digits = rest[start..].bytes().take_while(u8::is_ascii_digit).count();
            start <= 6 && (3..=4).contains(&digits)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn card_numbers_are_found_however_written() {
        for pan in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "pay with 5555555555554444 please",
            "378282246310005",
            "tok_4242424242424242",
            "6011111111111117",
        ] {
            assert_eq!(find(pan, false), Some(CardData::CardNumber), "{pan}");
            assert_eq!(find(pan, true), Some(CardData::CardNumber), "{pan}");
        }
    }

    #[test]
    fn digit_runs_that_fail_luhn_or_are_short_pass() {
        for ok in [
            "4242424242424241",
            "12345678901",
            "pm_1PgT2aLkdIwHu7ix",
            "tok_visa",
            "2026-000123",
            "0190a8c2-6f0e-7c4e-9a51-1d2f3e4a5b6c",
            // Digit groups that line up into a Luhn-valid run: ids, not cards.
            "01924823-4470-7128-a456-789abcdef012",
            "+1 555-555-1234 ext 42",
            // Groups of other lengths, or other separators, are not a printed card number.
            "42424242 42424242",
            "4242a4242a4242a4242",
        ] {
            assert_eq!(find(ok, false), None, "{ok}");
        }
    }

    #[test]
    fn security_codes_are_found_where_they_can_only_be_one() {
        assert_eq!(find("123", true), Some(CardData::SecurityCode));
        assert_eq!(find(" 1234 ", true), Some(CardData::SecurityCode));
        assert_eq!(find("123", false), None);
        for labelled in [
            "cvv 123",
            "CVC: 1234",
            "my security code is 999",
            "cvv2=123",
            "csc#321",
        ] {
            assert_eq!(
                find(labelled, false),
                Some(CardData::SecurityCode),
                "{labelled}"
            );
        }
        assert_eq!(find("cvv", false), None);
        assert_eq!(find("cvc 12", false), None);
    }

    #[test]
    fn no_uuid_is_taken_for_a_card_number() {
        for _ in 0..20_000 {
            for id in [uuid::Uuid::now_v7(), uuid::Uuid::new_v4()] {
                assert_eq!(find(&id.to_string(), true), None, "{id}");
            }
        }
    }

    #[test]
    fn luhn_matches_known_vectors() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<u8>>();
        assert!(luhn_valid(&digits("79927398713")));
        assert!(!luhn_valid(&digits("79927398710")));
    }
}
