//! Messaging's types and rules, pure: unit-tested without a database.

pub mod participants;
pub mod text;
