//! What the provider directory accepts: specialty codes, US state codes, language tags.

/// USPS codes of the states, DC and the territories where a US license can be held.
pub const US_STATES: &[&str] = &[
    "AL", "AK", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FL", "GA", "HI", "ID", "IL", "IN", "IA",
    "KS", "KY", "LA", "ME", "MD", "MA", "MI", "MN", "MS", "MO", "MT", "NE", "NV", "NH", "NJ", "NM",
    "NY", "NC", "ND", "OH", "OK", "OR", "PA", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VA", "WA",
    "WV", "WI", "WY", "PR", "GU", "VI", "AS", "MP",
];

pub fn is_state(s: &str) -> bool {
    US_STATES.contains(&s)
}

/// A lower-case code: letters, digits and '-', 1..=64 characters, starting with a letter
/// ("family-medicine"). Also the syntax of intake form names, with '.' and '_'.
pub fn is_code(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A price list code or form name: letters, digits, '-', '_', '.', 1..=64 characters.
pub fn is_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A BCP 47 language tag in its common shape: 2-3 letter primary language, then subtags of
/// 1-8 letters or digits ("en", "es-MX", "zh-Hant").
pub fn is_language(s: &str) -> bool {
    let mut parts = s.split('-');
    let primary_ok = parts
        .next()
        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
    primary_ok
        && s.len() <= 35
        && parts.all(|p| (1..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_states_and_languages() {
        assert!(is_code("family-medicine"));
        assert!(!is_code("Family Medicine"));
        assert!(!is_code("-x"));
        assert!(!is_code(""));
        assert!(is_state("NY") && is_state("DC") && is_state("PR"));
        assert!(!is_state("ny") && !is_state("XX") && !is_state("NYC"));
        assert!(is_language("en") && is_language("es-MX") && is_language("zh-Hant"));
        assert!(!is_language("e") && !is_language("en_US") && !is_language("english-"));
        assert!(is_name("EM-99213.v2") && !is_name("a b") && !is_name(""));
    }
}
