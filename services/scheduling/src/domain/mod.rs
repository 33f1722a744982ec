//! Scheduling's types and rules: pure, unit-tested without a database.
//!
//! - `appointment`: states, transitions, the late-cancellation rule.
//! - `directory`: what the provider directory accepts (specialties, states, languages).
//! - `slots`: weekly windows in the provider's zone and exceptions, turned into bookable slots
//!   date by date (correct across daylight-saving transitions), minus what is taken.
//! - `ical`: iCalendar (RFC 5545) feeds with VTIMEZONE components, CRLF and folding.

pub mod appointment;
pub mod directory;
pub mod ical;
pub mod slots;
