//! Proto encodings of scheduling's rows, shared by the handlers.

use carehub_platform::timestamps::{opt_to_proto, to_proto};
use carehub_proto::scheduling::v1 as pb;
use chrono::Weekday;

use crate::domain::appointment::{CancelReason, IntakeStatus, Modality, Status};
use crate::store::appointments::{AppointmentRow, HoldRow};
use crate::store::consultations::ConsultationRow;
use crate::store::providers::{ExceptionRow, ProviderRow, VisitTypeRow};

pub fn provider_to_pb(p: &ProviderRow) -> pb::Provider {
    pb::Provider {
        provider_id: p.provider_id.to_string(),
        time_zone: p.time_zone.clone(),
        specialties: p.specialties.clone(),
        license_states: p.license_states.clone(),
        languages: p.languages.clone(),
        accepting_new_patients: p.accepting_new_patients,
        visit_type_ids: p.visit_type_ids.iter().map(ToString::to_string).collect(),
        update_time: Some(to_proto(p.updated_at)),
    }
}

pub fn modality_to_pb(m: &str) -> pb::Modality {
    match Modality::parse(m) {
        Some(Modality::Telehealth) => pb::Modality::Telehealth,
        Some(Modality::InPerson) => pb::Modality::InPerson,
        None => pb::Modality::Unspecified,
    }
}

pub fn visit_type_to_pb(v: &VisitTypeRow) -> pb::VisitType {
    pb::VisitType {
        id: v.id.to_string(),
        name: v.name.clone(),
        duration_minutes: v.duration_minutes,
        buffer_minutes: v.buffer_minutes,
        modality: modality_to_pb(&v.modality) as i32,
        price_code: v.price_code.clone(),
        intake_form: v.intake_form.clone().unwrap_or_default(),
        create_time: Some(to_proto(v.created_at)),
    }
}

pub fn weekday_from_pb(w: i32) -> Option<Weekday> {
    match pb::Weekday::try_from(w).ok()? {
        pb::Weekday::Monday => Some(Weekday::Mon),
        pb::Weekday::Tuesday => Some(Weekday::Tue),
        pb::Weekday::Wednesday => Some(Weekday::Wed),
        pb::Weekday::Thursday => Some(Weekday::Thu),
        pb::Weekday::Friday => Some(Weekday::Fri),
        pb::Weekday::Saturday => Some(Weekday::Sat),
        pb::Weekday::Sunday => Some(Weekday::Sun),
        pb::Weekday::Unspecified => None,
    }
}

/// ISO weekday number (1 = Monday) as proto enum value (the same numbering).
pub fn weekday_to_pb(iso: i16) -> i32 {
    i32::from(iso)
}

pub fn exception_to_pb(e: &ExceptionRow) -> pb::AvailabilityException {
    pb::AvailabilityException {
        id: e.id.to_string(),
        provider_id: e.provider_id.to_string(),
        kind: match e.kind.as_str() {
            "time_off" => pb::ExceptionKind::TimeOff,
            "extra_hours" => pb::ExceptionKind::ExtraHours,
            _ => pb::ExceptionKind::Unspecified,
        } as i32,
        start_time: Some(to_proto(e.start_time)),
        end_time: Some(to_proto(e.end_time)),
    }
}

pub fn hold_to_pb(h: &HoldRow) -> pb::Hold {
    pb::Hold {
        id: h.id.to_string(),
        provider_id: h.provider_id.to_string(),
        patient_id: h.patient_id.to_string(),
        visit_type_id: h.visit_type_id.to_string(),
        start_time: Some(to_proto(h.start_time)),
        end_time: Some(to_proto(h.end_time)),
        expire_time: Some(to_proto(h.expires_at)),
        status: match h.status.as_str() {
            "active" => pb::HoldStatus::Active,
            "released" => pb::HoldStatus::Released,
            "booked" => pb::HoldStatus::Booked,
            "expired" => pb::HoldStatus::Expired,
            _ => pb::HoldStatus::Unspecified,
        } as i32,
    }
}

pub fn status_to_pb(s: &str) -> pb::AppointmentStatus {
    match Status::parse(s) {
        Some(Status::Requested) => pb::AppointmentStatus::Requested,
        Some(Status::Booked) => pb::AppointmentStatus::Booked,
        Some(Status::CheckedIn) => pb::AppointmentStatus::CheckedIn,
        Some(Status::InProgress) => pb::AppointmentStatus::InProgress,
        Some(Status::Completed) => pb::AppointmentStatus::Completed,
        Some(Status::Cancelled) => pb::AppointmentStatus::Cancelled,
        Some(Status::NoShow) => pb::AppointmentStatus::NoShow,
        None => pb::AppointmentStatus::Unspecified,
    }
}

pub fn cancel_reason_from_pb(r: i32) -> Option<CancelReason> {
    match pb::CancelReason::try_from(r).ok()? {
        pb::CancelReason::PatientRequest => Some(CancelReason::PatientRequest),
        pb::CancelReason::ProviderUnavailable => Some(CancelReason::ProviderUnavailable),
        pb::CancelReason::SchedulingError => Some(CancelReason::SchedulingError),
        pb::CancelReason::Other => Some(CancelReason::Other),
        pb::CancelReason::Unspecified => None,
    }
}

fn cancel_reason_to_pb(r: Option<&str>) -> pb::CancelReason {
    match r.and_then(CancelReason::parse) {
        Some(CancelReason::PatientRequest) => pb::CancelReason::PatientRequest,
        Some(CancelReason::ProviderUnavailable) => pb::CancelReason::ProviderUnavailable,
        Some(CancelReason::SchedulingError) => pb::CancelReason::SchedulingError,
        Some(CancelReason::Other) => pb::CancelReason::Other,
        None => pb::CancelReason::Unspecified,
    }
}

/// The etag of an appointment's current revision.
pub fn etag(a: &AppointmentRow) -> String {
    format!("{}-{}", a.id.simple(), a.revision)
}

/// `a` with its reason opened (`reason`).
pub fn appointment_to_pb(a: &AppointmentRow, reason: String) -> pb::Appointment {
    pb::Appointment {
        id: a.id.to_string(),
        provider_id: a.provider_id.to_string(),
        patient_id: a.patient_id.to_string(),
        visit_type_id: a.visit_type_id.to_string(),
        modality: modality_to_pb(&a.modality) as i32,
        start_time: Some(to_proto(a.start_time)),
        end_time: Some(to_proto(a.end_time)),
        status: status_to_pb(&a.status) as i32,
        intake_status: match IntakeStatus::parse(&a.intake_status) {
            Some(IntakeStatus::NotRequired) => pb::IntakeStatus::NotRequired,
            Some(IntakeStatus::Pending) => pb::IntakeStatus::Pending,
            Some(IntakeStatus::Submitted) => pb::IntakeStatus::Submitted,
            None => pb::IntakeStatus::Unspecified,
        } as i32,
        reason,
        cancel_reason: cancel_reason_to_pb(a.cancel_reason.as_deref()) as i32,
        late_cancellation: a.late_cancellation,
        reschedule_count: a.reschedule_count,
        consultation_request_id: a
            .consultation_request_id
            .map(|c| c.to_string())
            .unwrap_or_default(),
        create_time: Some(to_proto(a.created_at)),
        update_time: Some(to_proto(a.updated_at)),
        etag: etag(a),
    }
}

pub fn consultation_to_pb(
    c: &ConsultationRow,
    reason: String,
    decline_reason: String,
) -> pb::ConsultationRequest {
    let preferred_times = c
        .preferred_times
        .as_array()
        .map(|ranges| {
            ranges
                .iter()
                .filter_map(|r| {
                    let start = r.get(0)?.as_str()?.parse().ok()?;
                    let end = r.get(1)?.as_str()?.parse().ok()?;
                    Some(pb::TimeRange {
                        start_time: Some(to_proto(start)),
                        end_time: Some(to_proto(end)),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    pb::ConsultationRequest {
        id: c.id.to_string(),
        patient_id: c.patient_id.to_string(),
        reason,
        preferred_times,
        state: c.state.clone(),
        specialty: c.specialty.clone().unwrap_or_default(),
        status: match c.status.as_str() {
            "open" => pb::ConsultationStatus::Open,
            "accepted" => pb::ConsultationStatus::Accepted,
            "declined" => pb::ConsultationStatus::Declined,
            _ => pb::ConsultationStatus::Unspecified,
        } as i32,
        appointment_id: c.appointment_id.map(|a| a.to_string()).unwrap_or_default(),
        decline_reason,
        create_time: Some(to_proto(c.created_at)),
        update_time: opt_to_proto(Some(c.updated_at)),
    }
}
