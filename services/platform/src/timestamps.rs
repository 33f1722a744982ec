//! `google.protobuf.Timestamp` ↔ `DateTime<Utc>`, one way for every service.

use chrono::{DateTime, Datelike, Utc};
use prost_types::Timestamp;

use crate::errors::FieldViolations;

pub fn to_proto(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn opt_to_proto(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(to_proto)
}

/// The instant, when the message is a valid Timestamp: nanos within a second and a date in the
/// years 1 to 9999 (the range the Timestamp type documents).
pub fn from_proto(ts: &Timestamp) -> Option<DateTime<Utc>> {
    u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .and_then(|n| DateTime::from_timestamp(ts.seconds, n))
        .filter(|t| (1..=9999).contains(&t.year()))
}

/// An optional request field: `None` when absent; a violation naming `field` when malformed.
pub fn field(
    ts: Option<&Timestamp>,
    field: &str,
    violations: &mut FieldViolations,
) -> Option<DateTime<Utc>> {
    let ts = ts?;
    let parsed = from_proto(ts);
    if parsed.is_none() {
        violations.add(field, "is not a valid timestamp within the years 1 to 9999");
    }
    parsed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_timestamp_does_not_allow() {
        let t = DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap();
        assert_eq!(from_proto(&to_proto(t)), Some(t));
        for bad in [
            Timestamp {
                seconds: 0,
                nanos: -1,
            },
            Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
            Timestamp {
                seconds: 253_402_300_800,
                nanos: 0,
            }, // 10000-01-01
        ] {
            assert_eq!(from_proto(&bad), None, "{bad:?}");
        }
        let mut v = FieldViolations::new();
        assert_eq!(field(None, "since", &mut v), None);
        assert!(v.finish().is_ok());
        let mut v = FieldViolations::new();
        field(
            Some(&Timestamp {
                seconds: 0,
                nanos: -5,
            }),
            "since",
            &mut v,
        );
        assert!(v.finish().is_err());
    }
}
