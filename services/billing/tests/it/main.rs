//! Billing's one integration test binary: identity and billing on real PostgreSQL over mTLS,
//! on the test kit; the processor is the sandbox or the in-process Stripe double.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod appointments;
mod authz;
mod bad_input;
mod card_data;
mod common;
mod payments;
mod processor_secrets;
mod scheduling_flow;
mod stripe_adapter;
mod webhooks;
