//! Billing's types and rules, pure and unit-tested without a database: money and currencies
//! (`money`), the card-data detector that keeps card numbers out (`card_data`), invoices and
//! their numbering and cancellation rules (`invoice`), the processor's webhook signatures
//! (`webhook`).

pub mod card_data;
pub mod invoice;
pub mod money;
pub mod webhook;
