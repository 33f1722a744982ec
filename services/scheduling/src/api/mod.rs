//! The gRPC surface of scheduling: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service trait is implemented once, below: each RPC gets its per-call context
//! ([`Call`]), runs its handler, and the handler's [`SchedulingError`] becomes a
//! `tonic::Status` here and nowhere else. Handlers: `providers` (directory, visit types,
//! availability), `slots` (search), `holds`, `appointments` (booking, changes, the state
//! machine), `intake`, `consultations` (the triage queue), `feeds` (calendar feed tokens and
//! the HTTP feed itself), `accounts` (identity's account events). `access` says whose data a caller may act on; `effects` queues what
//! a change means for records, messaging and billing; `policy` says who may call what;
//! `kinds` is scheduling's audit vocabulary; `convert` holds the proto encodings.

pub mod access;
pub mod accounts;
pub mod appointments;
pub mod consultations;
pub mod convert;
pub mod effects;
pub mod feeds;
pub mod holds;
pub mod intake;
pub mod kinds;
pub mod policy;
pub mod providers;
pub mod slots;

use std::sync::Arc;

use carehub_platform::call::{Audited, Call};
use carehub_proto::common::v1::account_events_server::AccountEvents;
use carehub_proto::identity::v1::AccountStatusChanged;
use carehub_proto::scheduling::v1::scheduling_service_server::SchedulingService;
use carehub_proto::scheduling::v1::*;
use tonic::{Request, Response, Status};

use crate::error::SchedulingError;
use crate::AppState;

/// Runs `$handler` for the call `$req`: builds the call's context, decodes the request,
/// refuses an answer that was not audited, and maps the handler's error to a `Status`.
macro_rules! rpc {
    ($self:ident, $req:ident, $handler:path) => {
        rpc!($self, $req, ALWAYS, $handler)
    };
    ($self:ident, $req:ident, $audited:ident, $handler:path) => {{
        let call = Call::new(&$req)?;
        let answer: Result<_, SchedulingError> =
            $handler(&$self.state, &call, $req.into_inner()).await;
        call.check_audited($audited, answer)
            .map(Response::new)
            .map_err(Status::from)
    }};
}

const ALWAYS: Audited = Audited::Always;

/// The provider directory, visit types, availability and free slots hold no patient data.
const DIRECTORY: Audited =
    Audited::Exempt("reads the provider directory, visit types or free slots: no personal data");

/// A listing audits each item it returns; an empty one read nothing.
const LISTING: Audited =
    Audited::Exempt("an empty listing reads nothing; each item listed is audited");

/// Applying an account event answers nothing; the cancellations it makes are audited.
const ACCOUNT_EVENT: Audited =
    Audited::Exempt("answers nothing; a termination's cancellations are audited each");

/// Implements the generated services over the shared state.
#[derive(Clone)]
pub struct SchedulingApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl SchedulingService for SchedulingApi {
    async fn put_provider(
        &self,
        req: Request<PutProviderRequest>,
    ) -> Result<Response<Provider>, Status> {
        rpc!(self, req, ALWAYS, providers::put)
    }
    async fn get_provider(
        &self,
        req: Request<GetProviderRequest>,
    ) -> Result<Response<Provider>, Status> {
        rpc!(self, req, DIRECTORY, providers::get)
    }
    async fn create_visit_type(
        &self,
        req: Request<CreateVisitTypeRequest>,
    ) -> Result<Response<VisitType>, Status> {
        rpc!(self, req, providers::create_visit_type)
    }
    async fn list_visit_types(
        &self,
        req: Request<ListVisitTypesRequest>,
    ) -> Result<Response<ListVisitTypesResponse>, Status> {
        rpc!(self, req, DIRECTORY, providers::list_visit_types)
    }
    async fn set_weekly_availability(
        &self,
        req: Request<SetWeeklyAvailabilityRequest>,
    ) -> Result<Response<WeeklyAvailability>, Status> {
        rpc!(self, req, providers::set_weekly)
    }
    async fn get_weekly_availability(
        &self,
        req: Request<GetWeeklyAvailabilityRequest>,
    ) -> Result<Response<WeeklyAvailability>, Status> {
        rpc!(self, req, DIRECTORY, providers::get_weekly)
    }
    async fn add_availability_exception(
        &self,
        req: Request<AddAvailabilityExceptionRequest>,
    ) -> Result<Response<AvailabilityException>, Status> {
        rpc!(self, req, providers::add_exception)
    }
    async fn delete_availability_exception(
        &self,
        req: Request<DeleteAvailabilityExceptionRequest>,
    ) -> Result<Response<AvailabilityException>, Status> {
        rpc!(self, req, providers::delete_exception)
    }
    async fn list_availability_exceptions(
        &self,
        req: Request<ListAvailabilityExceptionsRequest>,
    ) -> Result<Response<ListAvailabilityExceptionsResponse>, Status> {
        rpc!(self, req, DIRECTORY, providers::list_exceptions)
    }
    async fn search_slots(
        &self,
        req: Request<SearchSlotsRequest>,
    ) -> Result<Response<SearchSlotsResponse>, Status> {
        rpc!(self, req, DIRECTORY, slots::search)
    }
    async fn create_hold(&self, req: Request<CreateHoldRequest>) -> Result<Response<Hold>, Status> {
        rpc!(self, req, holds::create)
    }
    async fn release_hold(
        &self,
        req: Request<ReleaseHoldRequest>,
    ) -> Result<Response<Hold>, Status> {
        rpc!(self, req, holds::release)
    }
    async fn book_appointment(
        &self,
        req: Request<BookAppointmentRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::book)
    }
    async fn get_appointment(
        &self,
        req: Request<GetAppointmentRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::get)
    }
    async fn list_appointments(
        &self,
        req: Request<ListAppointmentsRequest>,
    ) -> Result<Response<ListAppointmentsResponse>, Status> {
        rpc!(self, req, LISTING, appointments::list)
    }
    async fn cancel_appointment(
        &self,
        req: Request<CancelAppointmentRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::cancel)
    }
    async fn reschedule_appointment(
        &self,
        req: Request<RescheduleAppointmentRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::reschedule)
    }
    async fn confirm_appointment(
        &self,
        req: Request<AppointmentActionRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::confirm)
    }
    async fn check_in_appointment(
        &self,
        req: Request<AppointmentActionRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::check_in)
    }
    async fn start_appointment(
        &self,
        req: Request<AppointmentActionRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::start)
    }
    async fn complete_appointment(
        &self,
        req: Request<AppointmentActionRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::complete)
    }
    async fn mark_no_show(
        &self,
        req: Request<AppointmentActionRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, appointments::no_show)
    }
    async fn submit_intake(
        &self,
        req: Request<SubmitIntakeRequest>,
    ) -> Result<Response<Appointment>, Status> {
        rpc!(self, req, intake::submit)
    }
    async fn request_consultation(
        &self,
        req: Request<RequestConsultationRequest>,
    ) -> Result<Response<ConsultationRequest>, Status> {
        rpc!(self, req, consultations::request)
    }
    async fn get_consultation_request(
        &self,
        req: Request<GetConsultationRequestRequest>,
    ) -> Result<Response<ConsultationRequest>, Status> {
        rpc!(self, req, consultations::get)
    }
    async fn list_consultation_requests(
        &self,
        req: Request<ListConsultationRequestsRequest>,
    ) -> Result<Response<ListConsultationRequestsResponse>, Status> {
        rpc!(self, req, LISTING, consultations::list)
    }
    async fn accept_consultation_request(
        &self,
        req: Request<AcceptConsultationRequestRequest>,
    ) -> Result<Response<ConsultationRequest>, Status> {
        rpc!(self, req, consultations::accept)
    }
    async fn decline_consultation_request(
        &self,
        req: Request<DeclineConsultationRequestRequest>,
    ) -> Result<Response<ConsultationRequest>, Status> {
        rpc!(self, req, consultations::decline)
    }
    async fn create_calendar_feed(
        &self,
        req: Request<CreateCalendarFeedRequest>,
    ) -> Result<Response<CalendarFeed>, Status> {
        rpc!(self, req, feeds::create)
    }
    async fn list_calendar_feeds(
        &self,
        req: Request<ListCalendarFeedsRequest>,
    ) -> Result<Response<ListCalendarFeedsResponse>, Status> {
        rpc!(self, req, DIRECTORY, feeds::list)
    }
    async fn revoke_calendar_feed(
        &self,
        req: Request<RevokeCalendarFeedRequest>,
    ) -> Result<Response<CalendarFeed>, Status> {
        rpc!(self, req, feeds::revoke)
    }
}

#[tonic::async_trait]
impl AccountEvents for SchedulingApi {
    async fn apply_account_event(
        &self,
        req: Request<AccountStatusChanged>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, ACCOUNT_EVENT, accounts::apply_account_event)
    }
}
