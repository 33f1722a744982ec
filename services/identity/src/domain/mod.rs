//! Identity's types and rules: pure, unit-tested without a database.

pub mod password;
pub mod throttle;
pub mod tokens;
pub mod totp;
pub mod account;
pub mod validation;
