//! The gRPC surface of messaging: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service traits are implemented once, below: each RPC gets its per-call
//! context ([`Call`]), runs its handler, and the handler's [`MessagingError`] becomes a
//! `tonic::Status` here and nowhere else. Handlers: `conversations` (opening, reading and
//! listing conversations, and who is in them), `messages` (send, retract, events, read
//! positions), `stream` (live delivery), `attachments` (streamed, encrypted chunk by chunk),
//! `abuse` (reports, review, blocks, account actions), `accounts` (identity's account events),
//! `notifications` and `sms` (notifications and the SMS consent ledger), `video` (join
//! tokens). `policy` says who may call what; `kinds` is messaging's audit vocabulary;
//! `convert` holds the proto encodings they share.

pub mod abuse;
pub mod accounts;
pub mod attachments;
pub mod conversations;
pub mod convert;
pub mod kinds;
pub mod messages;
pub mod notifications;
pub mod policy;
pub mod sms;
pub mod stream;
pub mod video;

use std::sync::Arc;

use carehub_platform::call::{Audited, Call};
use carehub_proto::common::v1::account_events_server::AccountEvents;
use carehub_proto::identity::v1::AccountStatusChanged;
use carehub_proto::messaging::v1::messaging_internal_server::MessagingInternal;
use carehub_proto::messaging::v1::messaging_service_server::MessagingService;
use carehub_proto::messaging::v1::*;
use tonic::{Request, Response, Status};

use crate::error::MessagingError;
use crate::AppState;

/// Runs `$handler` for the call `$req`: builds the call's context, decodes the request,
/// refuses an answer that was not audited, and maps the handler's error to a `Status`.
macro_rules! rpc {
    ($self:ident, $req:ident, $handler:path) => {
        rpc!($self, $req, ALWAYS, $handler)
    };
    ($self:ident, $req:ident, $audited:ident, $handler:path) => {{
        let call = Call::new(&$req)?;
        let answer: Result<_, MessagingError> =
            $handler(&$self.state, &call, $req.into_inner()).await;
        call.check_audited($audited, answer)
            .map(Response::new)
            .map_err(Status::from)
    }};
}

const ALWAYS: Audited = Audited::Always;

/// Applying an account event answers nothing and reads no personal data.
const ACCOUNT_EVENT: Audited =
    Audited::Exempt("answers nothing; blocks the account's sending and closes its streams");

/// A listing audits each item it returns; an empty one read nothing.
const LISTING: Audited =
    Audited::Exempt("an empty listing reads nothing; each item listed is audited");

/// Implements the generated services over the shared state.
#[derive(Clone)]
pub struct MessagingApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl MessagingService for MessagingApi {
    async fn create_conversation(
        &self,
        req: Request<CreateConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        rpc!(self, req, conversations::create)
    }
    async fn get_conversation(
        &self,
        req: Request<GetConversationRequest>,
    ) -> Result<Response<Conversation>, Status> {
        rpc!(self, req, conversations::get)
    }
    async fn list_conversations(
        &self,
        req: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsResponse>, Status> {
        rpc!(self, req, LISTING, conversations::list)
    }
    async fn send_message(
        &self,
        req: Request<SendMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        rpc!(self, req, messages::send)
    }
    async fn retract_message(
        &self,
        req: Request<RetractMessageRequest>,
    ) -> Result<Response<Message>, Status> {
        rpc!(self, req, messages::retract)
    }
    async fn list_events(
        &self,
        req: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        rpc!(self, req, messages::list_events)
    }
    async fn mark_read(
        &self,
        req: Request<MarkReadRequest>,
    ) -> Result<Response<ReadState>, Status> {
        rpc!(self, req, messages::mark_read)
    }
    type StreamEventsStream = stream::EventStream;
    async fn stream_events(
        &self,
        req: Request<StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        rpc!(self, req, stream::open)
    }
    async fn upload_attachment(
        &self,
        req: Request<tonic::Streaming<UploadAttachmentRequest>>,
    ) -> Result<Response<Attachment>, Status> {
        rpc!(self, req, attachments::upload)
    }
    type DownloadAttachmentStream = attachments::ChunkStream;
    async fn download_attachment(
        &self,
        req: Request<DownloadAttachmentRequest>,
    ) -> Result<Response<Self::DownloadAttachmentStream>, Status> {
        rpc!(self, req, attachments::download)
    }
    async fn report_message(
        &self,
        req: Request<ReportMessageRequest>,
    ) -> Result<Response<Report>, Status> {
        rpc!(self, req, abuse::report)
    }
    async fn list_reports(
        &self,
        req: Request<ListReportsRequest>,
    ) -> Result<Response<ListReportsResponse>, Status> {
        rpc!(self, req, LISTING, abuse::list_reports)
    }
    async fn resolve_report(
        &self,
        req: Request<ResolveReportRequest>,
    ) -> Result<Response<Report>, Status> {
        rpc!(self, req, abuse::resolve)
    }
    async fn block_sender(
        &self,
        req: Request<BlockSenderRequest>,
    ) -> Result<Response<Block>, Status> {
        rpc!(self, req, abuse::block)
    }
    async fn unblock_sender(
        &self,
        req: Request<UnblockSenderRequest>,
    ) -> Result<Response<Block>, Status> {
        rpc!(self, req, abuse::unblock)
    }
    async fn get_video_join_token(
        &self,
        req: Request<GetVideoJoinTokenRequest>,
    ) -> Result<Response<VideoJoinToken>, Status> {
        rpc!(self, req, video::join_token)
    }
    async fn get_sms_consent(
        &self,
        req: Request<GetSmsConsentRequest>,
    ) -> Result<Response<SmsConsent>, Status> {
        rpc!(self, req, sms::get_consent)
    }
    async fn record_sms_opt_in(
        &self,
        req: Request<RecordSmsOptInRequest>,
    ) -> Result<Response<SmsConsent>, Status> {
        rpc!(self, req, sms::record_opt_in)
    }
}

#[tonic::async_trait]
impl MessagingInternal for MessagingApi {
    async fn send_notification(
        &self,
        req: Request<SendNotificationRequest>,
    ) -> Result<Response<Notification>, Status> {
        rpc!(self, req, notifications::send)
    }
    async fn get_notification(
        &self,
        req: Request<GetNotificationRequest>,
    ) -> Result<Response<Notification>, Status> {
        rpc!(self, req, notifications::get)
    }
    async fn apply_sms_preference(
        &self,
        req: Request<ApplySmsPreferenceRequest>,
    ) -> Result<Response<SmsConsent>, Status> {
        rpc!(self, req, sms::apply_preference)
    }
    async fn upsert_video_visit(
        &self,
        req: Request<UpsertVideoVisitRequest>,
    ) -> Result<Response<VideoVisit>, Status> {
        rpc!(self, req, video::upsert_visit)
    }
}

#[tonic::async_trait]
impl AccountEvents for MessagingApi {
    async fn apply_account_event(
        &self,
        req: Request<AccountStatusChanged>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, ACCOUNT_EVENT, accounts::apply_account_event)
    }
}
