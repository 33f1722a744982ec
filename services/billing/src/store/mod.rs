//! All of billing's SQL. Functions take a connection (a pool's or an open transaction's) and
//! return rows; handlers decide what they mean.

pub mod customers;
pub mod events;
pub mod intents;
pub mod invoices;
pub mod payments;
pub mod prices;
pub mod refunds;
