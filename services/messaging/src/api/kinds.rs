//! Messaging's audit event kinds: its part of the shared vocabulary (`platform::audit::kind`).
//! Every event messaging writes has one of these kinds; the README's table is checked against
//! [`VOCABULARY`] by a test. A care conversation's events are filed under its patient; a staff
//! conversation's under no one (counts only).

use carehub_platform::audit::{Action, Kind, Vocabulary};

const CONVERSATION: &str = "the patient of a care conversation; none for a staff conversation";
const RECIPIENT: &str = "the user notified";

pub const CONVERSATION_CREATE: Kind = Kind::new(
    "messaging.conversation.create",
    Action::Create,
    "a conversation was opened (CreateConversation)",
    CONVERSATION,
);
pub const CONVERSATION_READ: Kind = Kind::new(
    "messaging.conversation.read",
    Action::Read,
    "a conversation's subject was read (GetConversation, ListConversations: one per conversation)",
    CONVERSATION,
);
pub const MESSAGE_SEND: Kind = Kind::new(
    "messaging.message.send",
    Action::Create,
    "a message was sent (SendMessage)",
    CONVERSATION,
);
pub const MESSAGE_RETRACT: Kind = Kind::new(
    "messaging.message.retract",
    Action::Update,
    "a sender retracted a message (RetractMessage)",
    CONVERSATION,
);
pub const EVENTS_READ: Kind = Kind::new(
    "messaging.events.read",
    Action::Read,
    "messages of a conversation were read (ListEvents; each batch a live stream delivers)",
    CONVERSATION,
);
pub const READ_MARK: Kind = Kind::new(
    "messaging.read.mark",
    Action::Update,
    "a participant marked a conversation read (MarkRead)",
    CONVERSATION,
);
pub const ATTACHMENT_UPLOAD: Kind = Kind::new(
    "messaging.attachment.upload",
    Action::Create,
    "an attachment was uploaded (UploadAttachment)",
    CONVERSATION,
);
pub const ATTACHMENT_READ: Kind = Kind::new(
    "messaging.attachment.read",
    Action::Read,
    "an attachment was downloaded (DownloadAttachment)",
    CONVERSATION,
);
pub const REPORT_CREATE: Kind = Kind::new(
    "messaging.report.create",
    Action::Create,
    "a participant reported a message (ReportMessage)",
    CONVERSATION,
);
pub const REPORTS_READ: Kind = Kind::new(
    "messaging.reports.read",
    Action::Read,
    "staff read a reported message in the review queue (ListReports: one per report)",
    CONVERSATION,
);
pub const REPORT_RESOLVE: Kind = Kind::new(
    "messaging.report.resolve",
    Action::Update,
    "staff closed a report: dismissed, blocked, or asked identity to act (ResolveReport)",
    CONVERSATION,
);
pub const BLOCK_CREATE: Kind = Kind::new(
    "messaging.block.create",
    Action::Create,
    "staff blocked a sender in a conversation (BlockSender, ResolveReport)",
    CONVERSATION,
);
pub const BLOCK_LIFT: Kind = Kind::new(
    "messaging.block.lift",
    Action::Update,
    "staff lifted a block (UnblockSender)",
    CONVERSATION,
);
pub const NOTIFICATION_SEND: Kind = Kind::new(
    "messaging.notification.send",
    Action::Create,
    "a notification was queued for a user (SendNotification)",
    RECIPIENT,
);
pub const NOTIFICATION_READ: Kind = Kind::new(
    "messaging.notification.read",
    Action::Read,
    "a notification's delivery state was read (GetNotification)",
    RECIPIENT,
);
pub const SMS_CONSENT_CHANGE: Kind = Kind::new(
    "messaging.sms_consent.change",
    Action::Update,
    "a number's SMS consent changed (keyword, opt-in, identity's preferences)",
    "the user whose number it is, when known",
);
pub const SMS_CONSENT_READ: Kind = Kind::new(
    "messaging.sms_consent.read",
    Action::Read,
    "a number's SMS consent ledger was read (GetSmsConsent)",
    "the user whose number it is, when known",
);
pub const VIDEO_VISIT_UPSERT: Kind = Kind::new(
    "messaging.video_visit.upsert",
    Action::Update,
    "scheduling recorded or changed a video visit (UpsertVideoVisit)",
    "the visit's patient",
);
pub const VIDEO_TOKEN_ISSUE: Kind = Kind::new(
    "messaging.video_token.issue",
    Action::Create,
    "a participant was given a video join token (GetVideoJoinToken)",
    "the visit's patient",
);

/// Every kind messaging writes.
pub const VOCABULARY: Vocabulary = Vocabulary {
    prefix: "messaging",
    kinds: &[
        CONVERSATION_CREATE,
        CONVERSATION_READ,
        MESSAGE_SEND,
        MESSAGE_RETRACT,
        EVENTS_READ,
        READ_MARK,
        ATTACHMENT_UPLOAD,
        ATTACHMENT_READ,
        REPORT_CREATE,
        REPORTS_READ,
        REPORT_RESOLVE,
        BLOCK_CREATE,
        BLOCK_LIFT,
        NOTIFICATION_SEND,
        NOTIFICATION_READ,
        SMS_CONSENT_CHANGE,
        SMS_CONSENT_READ,
        VIDEO_VISIT_UPSERT,
        VIDEO_TOKEN_ISSUE,
    ],
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_vocabulary_is_well_formed() {
        assert_eq!(VOCABULARY.problems(), Vec::<String>::new());
    }

    /// The README's table lists every kind, with the action it records.
    #[test]
    fn the_readme_documents_every_kind() {
        let missing = VOCABULARY.undocumented_in(include_str!("../../../../README.md"));
        assert!(missing.is_empty(), "README lacks audit kinds {missing:?}");
    }
}
