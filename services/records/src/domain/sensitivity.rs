//! Sensitivity labels: categories of health information (mental health, substance-use
//! disorder records under 42 CFR Part 2, reproductive health, HIV) that care-team members see
//! only with the patient's explicit grant.

use carehub_platform::errors::FieldViolations;
use carehub_proto::records::v1 as pb;

use super::access::Access;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Label {
    MentalHealth,
    SubstanceUseDisorder,
    ReproductiveHealth,
    Hiv,
}

impl Label {
    pub const ALL: [Label; 4] = [
        Label::MentalHealth,
        Label::SubstanceUseDisorder,
        Label::ReproductiveHealth,
        Label::Hiv,
    ];

    pub fn to_pb(self) -> pb::SensitivityLabel {
        match self {
            Label::MentalHealth => pb::SensitivityLabel::MentalHealth,
            Label::SubstanceUseDisorder => pb::SensitivityLabel::SubstanceUseDisorder,
            Label::ReproductiveHealth => pb::SensitivityLabel::ReproductiveHealth,
            Label::Hiv => pb::SensitivityLabel::Hiv,
        }
    }

    /// The label a proto enum value names (none for UNSPECIFIED or an unknown number).
    pub fn from_pb(value: i32) -> Option<Self> {
        match pb::SensitivityLabel::try_from(value).ok()? {
            pb::SensitivityLabel::MentalHealth => Some(Label::MentalHealth),
            pb::SensitivityLabel::SubstanceUseDisorder => Some(Label::SubstanceUseDisorder),
            pb::SensitivityLabel::ReproductiveHealth => Some(Label::ReproductiveHealth),
            pb::SensitivityLabel::Hiv => Some(Label::Hiv),
            pb::SensitivityLabel::Unspecified => None,
        }
    }
}

/// The labels of a request (`field`, e.g. "labels"): each known, none twice; sorted.
pub fn check_labels(v: &mut FieldViolations, field: &str, values: &[i32]) -> Vec<Label> {
    let mut out = Vec::with_capacity(values.len());
    for (i, value) in values.iter().enumerate() {
        match Label::from_pb(*value) {
            None => v.add(&format!("{field}[{i}]"), "is not a sensitivity label"),
            Some(l) if out.contains(&l) => v.add(&format!("{field}[{i}]"), "is given twice"),
            Some(l) => out.push(l),
        }
    }
    out.sort();
    out
}

/// One label of a request (`field`): required and known.
pub fn check_label(v: &mut FieldViolations, field: &str, value: i32) -> Option<Label> {
    let label = Label::from_pb(value);
    if label.is_none() {
        v.add(field, "must be a sensitivity label");
    }
    label
}

/// Whether a version with `labels` is visible through `access`: always to the patient and to
/// break-glass (the medical-emergency exception, audited as such); to a care-team member when
/// they authored the entry or its current version, or the patient granted them every label.
pub fn visible(access: Access, labels: &[Label], granted: &[Label], authored: bool) -> bool {
    match access {
        Access::Patient | Access::BreakGlass => true,
        Access::Team(_) => authored || labels.iter().all(|l| granted.contains(l)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::domain::access::TeamRole;

    #[test]
    fn a_member_sees_a_labelled_entry_only_with_every_label_granted_or_as_its_author() {
        let team = Access::Team(TeamRole::Provider);
        let both = [Label::Hiv, Label::MentalHealth];
        assert!(visible(team, &[], &[], false));
        assert!(!visible(team, &both, &[], false));
        assert!(!visible(team, &both, &[Label::Hiv], false));
        assert!(visible(
            team,
            &both,
            &[Label::MentalHealth, Label::Hiv],
            false
        ));
        assert!(visible(team, &both, &[], true));
        assert!(visible(Access::Patient, &both, &[], false));
        assert!(visible(Access::BreakGlass, &both, &[], false));
    }

    #[test]
    fn labels_are_known_and_given_once() {
        let mut v = FieldViolations::new();
        let hiv = pb::SensitivityLabel::Hiv as i32;
        let mh = pb::SensitivityLabel::MentalHealth as i32;
        assert_eq!(
            check_labels(&mut v, "labels", &[hiv, mh]),
            vec![Label::MentalHealth, Label::Hiv]
        );
        assert!(v.is_empty());
        check_labels(&mut v, "labels", &[hiv, 0, 99, hiv]);
        assert_eq!(
            v.fields().collect::<Vec<_>>(),
            vec!["labels[1]", "labels[2]", "labels[3]"]
        );
        for l in Label::ALL {
            assert_eq!(Label::from_pb(l.to_pb() as i32), Some(l));
        }
    }
}
