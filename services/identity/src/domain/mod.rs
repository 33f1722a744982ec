//! Identity's types and rules: pure, unit-tested without a database.

pub mod password;
