//! The life of an amendment request (HIPAA 164.526): requested, then accepted or denied by a
//! provider (the deadline extended at most once before that); after a denial the patient may
//! file one statement of disagreement, and a provider one rebuttal to it.

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Requested,
    Accepted,
    Denied,
}

impl Status {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "requested" => Some(Status::Requested),
            "accepted" => Some(Status::Accepted),
            "denied" => Some(Status::Denied),
            _ => None,
        }
    }
}

/// What the request has beyond its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filed {
    pub extended: bool,
    pub disagreement: bool,
    pub rebuttal: bool,
}

/// A step someone wants to take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Extend,
    Decide,
    Disagree,
    Rebut,
}

/// Whether `step` may follow; why not (for FAILED_PRECONDITION) otherwise.
pub fn allowed(status: Status, filed: Filed, step: Step) -> Result<(), &'static str> {
    match (step, status) {
        (Step::Extend, Status::Requested) if !filed.extended => Ok(()),
        (Step::Extend, Status::Requested) => Err("the deadline was extended already"),
        (Step::Decide, Status::Requested) => Ok(()),
        (Step::Extend | Step::Decide, _) => Err("the request was decided already"),
        (Step::Disagree, Status::Denied) if !filed.disagreement => Ok(()),
        (Step::Disagree, Status::Denied) => Err("a statement of disagreement was filed already"),
        (Step::Disagree, _) => Err("only a denied request can be disagreed with"),
        (Step::Rebut, Status::Denied) if filed.disagreement && !filed.rebuttal => Ok(()),
        (Step::Rebut, Status::Denied) if filed.rebuttal => Err("a rebuttal was filed already"),
        (Step::Rebut, _) => Err("a rebuttal answers a statement of disagreement"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_follows_only_where_the_rule_allows_it() {
        use Status::*;
        use Step::*;
        let none = Filed::default();
        let extended = Filed {
            extended: true,
            ..none
        };
        let disagreed = Filed {
            disagreement: true,
            ..none
        };
        let rebutted = Filed {
            disagreement: true,
            rebuttal: true,
            ..none
        };
        let table = [
            (Requested, none, Extend, true),
            (Requested, extended, Extend, false),
            (Requested, extended, Decide, true),
            (Requested, none, Disagree, false),
            (Requested, none, Rebut, false),
            (Accepted, none, Extend, false),
            (Accepted, none, Decide, false),
            (Accepted, none, Disagree, false),
            (Denied, none, Decide, false),
            (Denied, none, Disagree, true),
            (Denied, none, Rebut, false),
            (Denied, disagreed, Disagree, false),
            (Denied, disagreed, Rebut, true),
            (Denied, rebutted, Rebut, false),
        ];
        for (status, filed, step, ok) in table {
            assert_eq!(
                allowed(status, filed, step).is_ok(),
                ok,
                "{status:?} {filed:?} {step:?}"
            );
        }
        assert_eq!(Status::parse("denied"), Some(Denied));
        assert_eq!(Status::parse("pending"), None);
    }
}
