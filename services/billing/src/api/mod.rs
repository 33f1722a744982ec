//! The gRPC surface of billing: proto <-> domain, authorization, idempotency. No SQL here.
//!
//! The generated service trait is implemented once, below: each RPC gets its per-call context
//! ([`Call`]), runs its handler, and the handler's [`BillingError`] becomes a `tonic::Status`
//! here and nowhere else. Handlers: `payment_methods`, `prices`, `invoices`, `payments`
//! (charges: intent, processor, settle), `refunds`, `documents` (receipts, statements),
//! `appointments` (scheduling's events), `webhooks` (the processor's events, on the admin
//! port). `access` says whose billing data a caller may see; `validate` refuses card data and
//! malformed fields; `policy` says who may call what; `kinds` is billing's audit vocabulary;
//! `convert` holds the proto encodings.

pub mod access;
pub mod appointments;
pub mod convert;
pub mod documents;
pub mod intents;
pub mod invoices;
pub mod kinds;
pub mod payment_methods;
pub mod payments;
pub mod policy;
pub mod prices;
pub mod refunds;
pub mod validate;
pub mod webhooks;

use std::sync::Arc;

use carehub_platform::call::{Audited, Call};
use carehub_proto::billing::v1::billing_service_server::BillingService;
use carehub_proto::billing::v1::*;
use carehub_proto::common::v1::appointment_events_server::AppointmentEvents;
use carehub_proto::scheduling::v1::AppointmentEvent;
use tonic::{Request, Response, Status};

use crate::error::BillingError;
use crate::AppState;

/// Runs `$handler` for the call `$req`: builds the call's context, decodes the request,
/// refuses an answer that was not audited, and maps the handler's error to a `Status`.
macro_rules! rpc {
    ($self:ident, $req:ident, $handler:path) => {
        rpc!($self, $req, ALWAYS, $handler)
    };
    ($self:ident, $req:ident, $audited:ident, $handler:path) => {{
        let call = Call::new(&$req)?;
        let answer: Result<_, BillingError> =
            $handler(&$self.state, &call, $req.into_inner()).await;
        call.check_audited($audited, answer)
            .map(Response::new)
            .map_err(Status::from)
    }};
}

const ALWAYS: Audited = Audited::Always;

/// The price list holds no patient data.
const PRICE_LIST: Audited = Audited::Exempt("reads the price list: no personal data");

/// A listing audits each item it returns; an empty one read nothing.
const LISTING: Audited =
    Audited::Exempt("an empty listing reads nothing; each item listed is audited");

/// An appointment event that changes nothing (a duplicate, an unpriced visit) audits nothing.
const APPOINTMENT_EVENT: Audited =
    Audited::Exempt("answers nothing; the invoice changes it makes are audited each");

/// Implements the generated services over the shared state.
#[derive(Clone)]
pub struct BillingApi {
    pub state: Arc<AppState>,
}

#[tonic::async_trait]
impl BillingService for BillingApi {
    async fn add_payment_method(
        &self,
        req: Request<AddPaymentMethodRequest>,
    ) -> Result<Response<PaymentMethod>, Status> {
        rpc!(self, req, payment_methods::add)
    }
    async fn list_payment_methods(
        &self,
        req: Request<ListPaymentMethodsRequest>,
    ) -> Result<Response<ListPaymentMethodsResponse>, Status> {
        rpc!(self, req, payment_methods::list)
    }
    async fn remove_payment_method(
        &self,
        req: Request<RemovePaymentMethodRequest>,
    ) -> Result<Response<PaymentMethod>, Status> {
        rpc!(self, req, payment_methods::remove)
    }
    async fn set_price(&self, req: Request<SetPriceRequest>) -> Result<Response<Price>, Status> {
        rpc!(self, req, prices::set)
    }
    async fn list_prices(
        &self,
        req: Request<ListPricesRequest>,
    ) -> Result<Response<ListPricesResponse>, Status> {
        rpc!(self, req, PRICE_LIST, prices::list)
    }
    async fn create_invoice(
        &self,
        req: Request<CreateInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        rpc!(self, req, invoices::create)
    }
    async fn get_invoice(
        &self,
        req: Request<GetInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        rpc!(self, req, invoices::get)
    }
    async fn list_invoices(
        &self,
        req: Request<ListInvoicesRequest>,
    ) -> Result<Response<ListInvoicesResponse>, Status> {
        rpc!(self, req, LISTING, invoices::list)
    }
    async fn void_invoice(
        &self,
        req: Request<VoidInvoiceRequest>,
    ) -> Result<Response<Invoice>, Status> {
        rpc!(self, req, invoices::void)
    }
    async fn pay_invoice(
        &self,
        req: Request<PayInvoiceRequest>,
    ) -> Result<Response<Payment>, Status> {
        rpc!(self, req, payments::pay)
    }
    async fn get_payment(
        &self,
        req: Request<GetPaymentRequest>,
    ) -> Result<Response<Payment>, Status> {
        rpc!(self, req, payments::get)
    }
    async fn refund_payment(
        &self,
        req: Request<RefundPaymentRequest>,
    ) -> Result<Response<Refund>, Status> {
        rpc!(self, req, refunds::refund)
    }
    async fn get_receipt(
        &self,
        req: Request<GetReceiptRequest>,
    ) -> Result<Response<Receipt>, Status> {
        rpc!(self, req, documents::receipt)
    }
    async fn get_statement(
        &self,
        req: Request<GetStatementRequest>,
    ) -> Result<Response<Statement>, Status> {
        rpc!(self, req, documents::statement)
    }
}

#[tonic::async_trait]
impl AppointmentEvents for BillingApi {
    async fn apply_appointment_event(
        &self,
        req: Request<AppointmentEvent>,
    ) -> Result<Response<()>, Status> {
        rpc!(self, req, APPOINTMENT_EVENT, appointments::apply)
    }
}
