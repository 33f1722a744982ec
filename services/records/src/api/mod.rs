//! The gRPC surface of records: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service traits are implemented once, below: each RPC gets its per-call
//! context ([`Call`]), runs its handler, and the handler's [`RecordsError`] becomes a
//! `tonic::Status` here and nowhere else. Handlers: `chart` (entries, versions,
//! verification), `team` (care teams), `break_glass` (emergency access and its review),
//! `sensitivity` (the patient's grants of labelled entries), `access_log` (who accessed the
//! patient's data, from every service's trail), `amendments` (HIPAA 164.526 requests),
//! `disclosures` (the 164.528 accounting), `notes` (clinical notes and addenda), `documents`
//! (streamed uploads and downloads, encrypted chunk by chunk), `export` (FHIR R4 Bundle),
//! `intake` (scheduling's intake answers, one version per submission).
//! `policy` says who may call what; `kinds` is records' audit vocabulary; `convert` holds
//! the proto encodings they share.
//!
//! Every RPC returns or changes health data or who may see it, so every one is
//! `Audited::Always` (reads answer through [`Call::read`], changes through [`Call::mutate`]),
//! but identity's account events, which answer nothing (`erasure`).

pub mod access_log;
pub mod amendments;
pub mod break_glass;
pub mod chart;
pub mod convert;
pub mod demographics;
pub mod disclosures;
pub mod documents;
pub mod erasure;
pub mod export;
pub mod import;
pub mod intake;
pub mod kinds;
pub mod notes;
pub mod policy;
pub mod sensitivity;
pub mod team;

use std::sync::Arc;

use carehub_platform::call::{Audited, Call};
use carehub_proto::common::v1::account_events_server::AccountEvents;
use carehub_proto::identity::v1::AccountStatusChanged;
use carehub_proto::records::v1::records_internal_server::RecordsInternal;
use carehub_proto::records::v1::records_service_server::RecordsService;
use carehub_proto::records::v1::*;
use tonic::{Request, Response, Status};

use crate::error::RecordsError;
use crate::AppState;

/// Runs `$handler` for the call `$req`: builds the call's context, decodes the request,
/// refuses an answer that was not audited, and maps the handler's error to a `Status`.
macro_rules! rpc {
    ($self:ident, $req:ident, $handler:path) => {
        rpc!($self, $req, Audited::Always, $handler)
    };
    ($self:ident, $req:ident, $audited:expr, $handler:path) => {{
        let call = Call::new(&$req)?;
        let answer: Result<_, RecordsError> =
            $handler(&$self.state, &call, $req.into_inner()).await;
        call.check_audited($audited, answer)
            .map(Response::new)
            .map_err(Status::from)
    }};
}

/// Applying an account event returns nothing; an erasure it schedules is audited.
const ACCOUNT_EVENT: Audited =
    Audited::Exempt("answers nothing; the erasure a termination schedules is audited");

/// Implements both generated services over the shared state.
#[derive(Clone)]
pub struct RecordsApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl RecordsService for RecordsApi {
    async fn get_chart(&self, req: Request<GetChartRequest>) -> Result<Response<Chart>, Status> {
        rpc!(self, req, chart::get_chart)
    }
    async fn get_entry(&self, req: Request<GetEntryRequest>) -> Result<Response<Entry>, Status> {
        rpc!(self, req, chart::get_entry)
    }
    async fn list_entry_versions(
        &self,
        req: Request<ListEntryVersionsRequest>,
    ) -> Result<Response<ListEntryVersionsResponse>, Status> {
        rpc!(self, req, chart::list_entry_versions)
    }
    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        rpc!(self, req, chart::create_entry)
    }
    async fn update_entry(
        &self,
        req: Request<UpdateEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        rpc!(self, req, chart::update_entry)
    }
    async fn verify_entry(
        &self,
        req: Request<VerifyEntryRequest>,
    ) -> Result<Response<Entry>, Status> {
        rpc!(self, req, chart::verify_entry)
    }
    async fn list_care_team(
        &self,
        req: Request<ListCareTeamRequest>,
    ) -> Result<Response<CareTeam>, Status> {
        rpc!(self, req, team::list_care_team)
    }
    async fn add_care_team_member(
        &self,
        req: Request<AddCareTeamMemberRequest>,
    ) -> Result<Response<CareTeam>, Status> {
        rpc!(self, req, team::add_care_team_member)
    }
    async fn remove_care_team_member(
        &self,
        req: Request<RemoveCareTeamMemberRequest>,
    ) -> Result<Response<CareTeam>, Status> {
        rpc!(self, req, team::remove_care_team_member)
    }
    async fn break_glass(
        &self,
        req: Request<BreakGlassRequest>,
    ) -> Result<Response<BreakGlassAccess>, Status> {
        rpc!(self, req, break_glass::break_glass)
    }
    async fn list_break_glass_accesses(
        &self,
        req: Request<ListBreakGlassAccessesRequest>,
    ) -> Result<Response<ListBreakGlassAccessesResponse>, Status> {
        rpc!(self, req, break_glass::list_break_glass_accesses)
    }
    async fn grant_sensitive_access(
        &self,
        req: Request<GrantSensitiveAccessRequest>,
    ) -> Result<Response<SensitiveAccessGrants>, Status> {
        rpc!(self, req, sensitivity::grant)
    }
    async fn revoke_sensitive_access(
        &self,
        req: Request<RevokeSensitiveAccessRequest>,
    ) -> Result<Response<SensitiveAccessGrants>, Status> {
        rpc!(self, req, sensitivity::revoke)
    }
    async fn request_amendment(
        &self,
        req: Request<RequestAmendmentRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::request)
    }
    async fn extend_amendment(
        &self,
        req: Request<ExtendAmendmentRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::extend)
    }
    async fn accept_amendment(
        &self,
        req: Request<AcceptAmendmentRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::accept)
    }
    async fn deny_amendment(
        &self,
        req: Request<DenyAmendmentRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::deny)
    }
    async fn file_disagreement(
        &self,
        req: Request<FileDisagreementRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::disagree)
    }
    async fn file_rebuttal(
        &self,
        req: Request<FileRebuttalRequest>,
    ) -> Result<Response<Amendment>, Status> {
        rpc!(self, req, amendments::rebut)
    }
    async fn list_amendments(
        &self,
        req: Request<ListAmendmentsRequest>,
    ) -> Result<Response<ListAmendmentsResponse>, Status> {
        rpc!(self, req, amendments::list)
    }
    async fn record_disclosure(
        &self,
        req: Request<RecordDisclosureRequest>,
    ) -> Result<Response<Disclosure>, Status> {
        rpc!(self, req, disclosures::record)
    }
    async fn list_disclosures(
        &self,
        req: Request<ListDisclosuresRequest>,
    ) -> Result<Response<ListDisclosuresResponse>, Status> {
        rpc!(self, req, disclosures::list)
    }
    type ExportChartStream = export::FhirStream;
    async fn export_chart(
        &self,
        req: Request<ExportChartRequest>,
    ) -> Result<Response<Self::ExportChartStream>, Status> {
        rpc!(self, req, export::export)
    }
    async fn get_demographics(
        &self,
        req: Request<GetDemographicsRequest>,
    ) -> Result<Response<Demographics>, Status> {
        rpc!(self, req, demographics::get)
    }
    async fn update_demographics(
        &self,
        req: Request<UpdateDemographicsRequest>,
    ) -> Result<Response<Demographics>, Status> {
        rpc!(self, req, demographics::update)
    }
    async fn get_condition_aggregates(
        &self,
        req: Request<GetConditionAggregatesRequest>,
    ) -> Result<Response<ConditionAggregates>, Status> {
        rpc!(self, req, demographics::aggregates)
    }
    async fn upload_document(
        &self,
        req: Request<tonic::Streaming<UploadDocumentRequest>>,
    ) -> Result<Response<Document>, Status> {
        rpc!(self, req, documents::upload)
    }
    type DownloadDocumentStream = documents::ChunkStream;
    async fn download_document(
        &self,
        req: Request<DownloadDocumentRequest>,
    ) -> Result<Response<Self::DownloadDocumentStream>, Status> {
        rpc!(self, req, documents::download)
    }
    async fn list_documents(
        &self,
        req: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        rpc!(self, req, documents::list)
    }
    async fn create_note(&self, req: Request<CreateNoteRequest>) -> Result<Response<Note>, Status> {
        rpc!(self, req, notes::create)
    }
    async fn update_note(&self, req: Request<UpdateNoteRequest>) -> Result<Response<Note>, Status> {
        rpc!(self, req, notes::update)
    }
    async fn sign_note(&self, req: Request<SignNoteRequest>) -> Result<Response<Note>, Status> {
        rpc!(self, req, notes::sign)
    }
    async fn add_note_addendum(
        &self,
        req: Request<AddNoteAddendumRequest>,
    ) -> Result<Response<Note>, Status> {
        rpc!(self, req, notes::add_addendum)
    }
    async fn list_notes(
        &self,
        req: Request<ListNotesRequest>,
    ) -> Result<Response<ListNotesResponse>, Status> {
        rpc!(self, req, notes::list)
    }
    async fn get_access_log(
        &self,
        req: Request<GetAccessLogRequest>,
    ) -> Result<Response<AccessLog>, Status> {
        rpc!(self, req, access_log::get_access_log)
    }
    async fn list_sensitive_access_grants(
        &self,
        req: Request<ListSensitiveAccessGrantsRequest>,
    ) -> Result<Response<SensitiveAccessGrants>, Status> {
        rpc!(self, req, sensitivity::list)
    }
}

#[tonic::async_trait]
impl RecordsInternal for RecordsApi {
    async fn import_fhir_bundle(
        &self,
        req: Request<ImportFhirBundleRequest>,
    ) -> Result<Response<ImportFhirBundleResponse>, Status> {
        rpc!(self, req, import::import)
    }
    async fn add_booked_provider(
        &self,
        req: Request<AddBookedProviderRequest>,
    ) -> Result<Response<CareTeam>, Status> {
        rpc!(self, req, team::add_booked_provider)
    }
    async fn record_intake_response(
        &self,
        req: Request<RecordIntakeResponseRequest>,
    ) -> Result<Response<IntakeResponse>, Status> {
        rpc!(self, req, intake::record)
    }
    async fn get_care_team(
        &self,
        req: Request<GetCareTeamRequest>,
    ) -> Result<Response<CareTeam>, Status> {
        rpc!(self, req, team::get_care_team)
    }
}

#[tonic::async_trait]
impl AccountEvents for RecordsApi {
    async fn apply_account_event(
        &self,
        req: Request<AccountStatusChanged>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, ACCOUNT_EVENT, erasure::apply_account_event)
    }
}
