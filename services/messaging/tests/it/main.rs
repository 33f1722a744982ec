//! Messaging's integration tests: one test binary, one module per area. Each test runs a real
//! identity, a real records and a real messaging (real Postgres, real mTLS on one dev CA),
//! started by the test kit through [`common`]: messaging verifies identity's tokens, looks users
//! up there and asks records who is on a care team; identity's outbox delivers account events
//! to records and messaging, and messaging's outbox asks identity to act on abuse reports.

mod common;

mod abuse;
mod alerts;
mod attachments;
mod authz;
mod conversations;
mod live;
mod notifications;
mod sms;
mod video;
