//! All of scheduling's SQL. Functions take a connection (a pooled one, or the transaction of
//! the call's change) and return rows; the handlers turn them into answers.
//!
//! - `providers`: the directory, visit types, weekly windows, exceptions.
//! - `appointments`: slot claims, holds, appointments (the exclusion constraints live here).
//! - `consultations`: consultation requests.
//! - `reminders`: reminder rows and the worker's claim of due ones.
//! - `feeds`: calendar feed tokens.

pub mod appointments;
pub mod consultations;
pub mod feeds;
pub mod providers;
pub mod reminders;
