//! Scheduling's one integration test binary: identity, records, messaging and scheduling on
//! real PostgreSQL over mTLS, on the test kit.

mod authz;
mod bad_input;
mod booking;
mod common;
mod consultations;
mod dst;
mod effects;
mod feeds;
mod ical_tools;
