//! All of messaging's SQL. Returns rows; sealing and opening are the api's (through
//! [`sealed`]), so that nothing here sees plaintext.

pub mod attachments;
pub mod conversations;
pub mod events;
pub mod moderation;
pub mod notifications;
pub mod sealed;
pub mod sms;
pub mod video;

/// The channel messaging's replicas announce new events and kicked participants on (see
/// `crate::live`).
pub const CHANNEL: &str = "carehub_messaging";
