//! Proto encodings the handlers share.

use carehub_proto::messaging::v1 as pb;

pub use carehub_platform::timestamps::to_proto as ts;

use crate::domain::participants::ConversationKind;
use crate::store::conversations::ConversationRow;

/// `row` with its opened subject and the caller's read position and unread count.
pub fn conversation_to_pb(
    row: &ConversationRow,
    subject: String,
    (read_seq, unread): (i64, i64),
) -> pb::Conversation {
    pb::Conversation {
        id: row.id.to_string(),
        kind: match row.kind() {
            ConversationKind::Care => pb::ConversationKind::Care,
            ConversationKind::Staff => pb::ConversationKind::Staff,
        } as i32,
        patient_id: row.patient_id.map(|p| p.to_string()).unwrap_or_default(),
        member_ids: row.members.iter().map(ToString::to_string).collect(),
        subject,
        created_by: row.created_by.to_string(),
        create_time: Some(ts(row.created_at)),
        last_seq: row.last_seq,
        last_activity_time: Some(ts(row.last_activity_at)),
        unread_count: unread,
        read_seq,
    }
}
