//! All of identity's SQL. Functions take a `&mut PgConnection` (a transaction's or a pool
//! connection's) and return domain types.

pub mod accounts;
pub mod preferences;
pub mod revocation;
pub mod sealed;
pub mod sessions;
