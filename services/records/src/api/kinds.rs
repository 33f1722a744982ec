//! Records' audit event kinds: its part of the shared vocabulary (`platform::audit::kind`).
//! Every event records writes has one of these kinds; the README's table is checked against
//! [`VOCABULARY`] by a test. Each event is filed under the patient whose chart it concerns.

use carehub_platform::audit::{Action, Kind, Vocabulary};

const PATIENT: &str = "the patient whose chart it is";

pub const CHART_READ: Kind = Kind::new(
    "records.chart.read",
    Action::Read,
    "a chart was read (GetChart)",
    PATIENT,
);
pub const ENTRY_READ: Kind = Kind::new(
    "records.entry.read",
    Action::Read,
    "a chart entry was read (GetEntry)",
    PATIENT,
);
pub const ENTRY_HISTORY_READ: Kind = Kind::new(
    "records.entry.history.read",
    Action::Read,
    "every version of a chart entry was read (ListEntryVersions)",
    PATIENT,
);
pub const ENTRY_CREATE: Kind = Kind::new(
    "records.entry.create",
    Action::Create,
    "a chart entry was added (CreateEntry)",
    PATIENT,
);
pub const ENTRY_UPDATE: Kind = Kind::new(
    "records.entry.update",
    Action::Update,
    "a chart entry was changed: a new version (UpdateEntry)",
    PATIENT,
);
pub const ENTRY_VERIFY: Kind = Kind::new(
    "records.entry.verify",
    Action::Update,
    "a provider checked and confirmed a chart entry (VerifyEntry)",
    PATIENT,
);
pub const CARE_TEAM_READ: Kind = Kind::new(
    "records.care_team.read",
    Action::Read,
    "a care team was read (ListCareTeam)",
    PATIENT,
);
pub const CARE_TEAM_ADD: Kind = Kind::new(
    "records.care_team.add",
    Action::Create,
    "a provider or staff member joined a care team (AddCareTeamMember, AddBookedProvider)",
    PATIENT,
);
pub const CARE_TEAM_REMOVE: Kind = Kind::new(
    "records.care_team.remove",
    Action::Update,
    "a member's care-team period ended (RemoveCareTeamMember)",
    PATIENT,
);
pub const BREAK_GLASS_OPEN: Kind = Kind::new(
    "records.break_glass.open",
    Action::Create,
    "a provider outside the care team opened a chart in an emergency (BreakGlass)",
    PATIENT,
);
pub const BREAK_GLASS_REVIEW: Kind = Kind::new(
    "records.break_glass.review",
    Action::Read,
    "an admin read a break-glass access and its reason (ListBreakGlassAccesses)",
    PATIENT,
);

pub const SENSITIVE_GRANT: Kind = Kind::new(
    "records.sensitive_grant.add",
    Action::Create,
    "a patient let a care-team member see entries with a sensitivity label (GrantSensitiveAccess)",
    PATIENT,
);
pub const SENSITIVE_REVOKE: Kind = Kind::new(
    "records.sensitive_grant.revoke",
    Action::Update,
    "a patient took a sensitivity grant back (RevokeSensitiveAccess)",
    PATIENT,
);
pub const SENSITIVE_GRANTS_READ: Kind = Kind::new(
    "records.sensitive_grant.read",
    Action::Read,
    "a patient read their sensitivity grants (ListSensitiveAccessGrants, or a grant already held)",
    PATIENT,
);

pub const ERASURE_SCHEDULE: Kind = Kind::new(
    "records.erasure.schedule",
    Action::Create,
    "a chart's erasure was scheduled: account terminated, a minor's data, or an operator (reason code as outcome_reason)",
    PATIENT,
);
pub const ERASURE_DONE: Kind = Kind::new(
    "records.erasure.done",
    Action::Delete,
    "a chart was erased: the patient's data keys destroyed after the legal hold",
    PATIENT,
);

pub const ACCESS_LOG_READ: Kind = Kind::new(
    "records.access_log.read",
    Action::Read,
    "a patient read who accessed their data (GetAccessLog)",
    PATIENT,
);

pub const AMENDMENT_REQUEST: Kind = Kind::new(
    "records.amendment.request",
    Action::Create,
    "a patient asked to amend an entry of their chart (RequestAmendment)",
    PATIENT,
);
pub const AMENDMENT_EXTEND: Kind = Kind::new(
    "records.amendment.extend",
    Action::Update,
    "a provider extended an amendment request's deadline (ExtendAmendment)",
    PATIENT,
);
pub const AMENDMENT_ACCEPT: Kind = Kind::new(
    "records.amendment.accept",
    Action::Update,
    "a provider accepted an amendment request; the entry was amended (AcceptAmendment)",
    PATIENT,
);
pub const AMENDMENT_DENY: Kind = Kind::new(
    "records.amendment.deny",
    Action::Update,
    "a provider denied an amendment request in writing (DenyAmendment)",
    PATIENT,
);
pub const AMENDMENT_DISAGREE: Kind = Kind::new(
    "records.amendment.disagree",
    Action::Update,
    "a patient filed a statement of disagreement with a denial (FileDisagreement)",
    PATIENT,
);
pub const AMENDMENT_REBUT: Kind = Kind::new(
    "records.amendment.rebut",
    Action::Update,
    "a provider filed a rebuttal to a statement of disagreement (FileRebuttal)",
    PATIENT,
);
pub const AMENDMENTS_READ: Kind = Kind::new(
    "records.amendment.list",
    Action::Read,
    "a chart's amendment requests were read (ListAmendments)",
    PATIENT,
);
pub const DISCLOSURE_RECORD: Kind = Kind::new(
    "records.disclosure.record",
    Action::Disclose,
    "a disclosure to a third party was recorded (RecordDisclosure)",
    PATIENT,
);
pub const DISCLOSURES_READ: Kind = Kind::new(
    "records.disclosure.list",
    Action::Read,
    "a patient read the accounting of disclosures (ListDisclosures)",
    PATIENT,
);

pub const NOTE_CREATE: Kind = Kind::new(
    "records.note.create",
    Action::Create,
    "a provider started a clinical note (CreateNote)",
    PATIENT,
);
pub const NOTE_UPDATE: Kind = Kind::new(
    "records.note.update",
    Action::Update,
    "a provider changed their draft note (UpdateNote)",
    PATIENT,
);
pub const NOTE_SIGN: Kind = Kind::new(
    "records.note.sign",
    Action::Update,
    "a provider signed a note; it never changes again (SignNote)",
    PATIENT,
);
pub const NOTE_ADDENDUM: Kind = Kind::new(
    "records.note.addendum",
    Action::Create,
    "a provider added a signed addendum to a signed note (AddNoteAddendum)",
    PATIENT,
);
pub const NOTES_READ: Kind = Kind::new(
    "records.note.list",
    Action::Read,
    "a chart's notes were read (ListNotes)",
    PATIENT,
);

pub const DOCUMENT_UPLOAD: Kind = Kind::new(
    "records.document.upload",
    Action::Create,
    "a document was added to a chart (UploadDocument)",
    PATIENT,
);
pub const DOCUMENT_READ: Kind = Kind::new(
    "records.document.read",
    Action::Read,
    "a document was downloaded (DownloadDocument)",
    PATIENT,
);
pub const DOCUMENTS_READ: Kind = Kind::new(
    "records.document.list",
    Action::Read,
    "a chart's documents were listed (ListDocuments)",
    PATIENT,
);

pub const CHART_EXPORT: Kind = Kind::new(
    "records.chart.export",
    Action::Read,
    "a chart was exported as a FHIR R4 Bundle (ExportChart)",
    PATIENT,
);

pub const CHART_IMPORT: Kind = Kind::new(
    "records.chart.import",
    Action::Create,
    "an integration imported a FHIR R4 Bundle into a chart (RecordsInternal.ImportFhirBundle)",
    PATIENT,
);

pub const INTAKE_RECORD: Kind = Kind::new(
    "records.intake.record",
    Action::Create,
    "scheduling recorded a patient's intake answers for an appointment, a new version per submission (RecordsInternal.RecordIntakeResponse)",
    PATIENT,
);

pub const DEMOGRAPHICS_READ: Kind = Kind::new(
    "records.demographics.read",
    Action::Read,
    "a patient's demographics were read (GetDemographics)",
    PATIENT,
);
pub const DEMOGRAPHICS_UPDATE: Kind = Kind::new(
    "records.demographics.update",
    Action::Update,
    "a patient's demographics were changed (UpdateDemographics)",
    PATIENT,
);
pub const AGGREGATES_READ: Kind = Kind::new(
    "records.aggregates.read",
    Action::Read,
    "de-identified condition counts were read (GetConditionAggregates)",
    "no one: counts only",
);

/// Every kind records writes.
pub const VOCABULARY: Vocabulary = Vocabulary {
    prefix: "records",
    kinds: &[
        CHART_READ,
        ENTRY_READ,
        ENTRY_HISTORY_READ,
        ENTRY_CREATE,
        ENTRY_UPDATE,
        ENTRY_VERIFY,
        CARE_TEAM_READ,
        CARE_TEAM_ADD,
        CARE_TEAM_REMOVE,
        BREAK_GLASS_OPEN,
        BREAK_GLASS_REVIEW,
        SENSITIVE_GRANT,
        SENSITIVE_REVOKE,
        SENSITIVE_GRANTS_READ,
        ERASURE_SCHEDULE,
        ERASURE_DONE,
        ACCESS_LOG_READ,
        AMENDMENT_REQUEST,
        AMENDMENT_EXTEND,
        AMENDMENT_ACCEPT,
        AMENDMENT_DENY,
        AMENDMENT_DISAGREE,
        AMENDMENT_REBUT,
        AMENDMENTS_READ,
        DISCLOSURE_RECORD,
        DISCLOSURES_READ,
        NOTE_CREATE,
        NOTE_UPDATE,
        NOTE_SIGN,
        NOTE_ADDENDUM,
        NOTES_READ,
        DOCUMENT_UPLOAD,
        DOCUMENT_READ,
        DOCUMENTS_READ,
        CHART_EXPORT,
        CHART_IMPORT,
        INTAKE_RECORD,
        DEMOGRAPHICS_READ,
        DEMOGRAPHICS_UPDATE,
        AGGREGATES_READ,
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
