//! Identity's types and rules: pure, unit-tested without a database.

pub mod account;
pub mod password;
pub mod throttle;
pub mod tokens;
pub mod totp;
pub mod validation;
