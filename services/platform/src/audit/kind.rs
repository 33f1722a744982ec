//! Audit event kinds: typed values of one shared vocabulary.
//!
//! A kind names what happened (`identity.login`, `records.note.read`). Each service declares
//! its kinds once, as [`Kind`] constants in one module with a [`Vocabulary`] listing them all
//! (identity: `carehub_identity::audit_kinds`); the platform's own are in [`PLATFORM`]. Handlers
//! use the constants, never a string, so that the patient's access log (records) reads one
//! vocabulary and a new kind is a reviewed line in one place. The stored code is the plain
//! dotted string, so chains written before kinds were typed still verify.

use super::event::Action;

/// One kind of audit event: its stored code, the action it always is, and what it documents
/// (when it is written, whose data its subject is) for the README's vocabulary table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind {
    code: &'static str,
    action: Action,
    /// When the event is written.
    pub when: &'static str,
    /// Whose data the event's subject is.
    pub subject: &'static str,
}

impl Kind {
    /// A kind with a dotted `code` (`<service>.<thing>[.<verb>]`, at most 64 characters of
    /// `[a-z0-9._]`), checked by [`Vocabulary::problems`].
    pub const fn new(
        code: &'static str,
        action: Action,
        when: &'static str,
        subject: &'static str,
    ) -> Self {
        Kind {
            code,
            action,
            when,
            subject,
        }
    }

    /// The code as stored in `audit_events.kind`.
    pub const fn code(self) -> &'static str {
        self.code
    }

    /// The FHIR action every event of this kind records.
    pub const fn action(self) -> Action {
        self.action
    }
}

impl AsRef<str> for Kind {
    fn as_ref(&self) -> &str {
        self.code
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code)
    }
}

/// The kinds of one service, all in one list.
#[derive(Clone, Copy, Debug)]
pub struct Vocabulary {
    /// The service whose kinds these are; every code starts with `<prefix>.`.
    pub prefix: &'static str,
    pub kinds: &'static [Kind],
}

impl Vocabulary {
    /// The codes of the kinds `doc` (the README) does not list in its table as
    /// `` | `code` | action | ``. Each service's tests assert this is empty.
    pub fn undocumented_in(&self, doc: &str) -> Vec<&'static str> {
        self.kinds
            .iter()
            .filter(|k| !doc.contains(&format!("| `{}` | {} |", k.code(), k.action())))
            .map(|k| k.code())
            .collect()
    }

    /// The kind stored as `code`, if this vocabulary has it.
    pub fn get(&self, code: &str) -> Option<Kind> {
        self.kinds.iter().copied().find(|k| k.code == code)
    }

    /// What is wrong with the vocabulary: a code outside its prefix, malformed, or declared
    /// twice; a kind without its documentation. Each service's tests assert this is empty.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for k in self.kinds {
            let well_formed = k.code.len() <= 64
                && k.code
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b))
                && !k.code.ends_with('.')
                && k.code
                    .strip_prefix(self.prefix)
                    .is_some_and(|rest| rest.starts_with('.') && rest.len() > 1);
            if !well_formed {
                out.push(format!(
                    "{}: not a dotted code under {}.",
                    k.code, self.prefix
                ));
            }
            if !seen.insert(k.code) {
                out.push(format!("{}: declared twice", k.code));
            }
            if k.when.trim().is_empty() || k.subject.trim().is_empty() {
                out.push(format!("{}: undocumented", k.code));
            }
        }
        out
    }

    /// The vocabulary as README table rows: `| code | action | when | subject |`.
    pub fn markdown_rows(&self) -> String {
        self.kinds
            .iter()
            .map(|k| {
                format!(
                    "| `{}` | {} | {} | {} |\n",
                    k.code, k.action, k.when, k.subject
                )
            })
            .collect()
    }
}

/// Reading the audit log by subject (AuditLog.ListEvents).
pub const AUDIT_LIST_BY_SUBJECT: Kind = Kind::new(
    "audit.events.list_by_subject",
    Action::Read,
    "someone listed the audit events about a subject (AuditLog.ListEvents)",
    "none (entity is the subject listed; not filed under it, so looking does not grow the log)",
);

/// Reading the audit log by actor (AuditLog.ListEvents).
pub const AUDIT_LIST_BY_ACTOR: Kind = Kind::new(
    "audit.events.list_by_actor",
    Action::Read,
    "someone listed the audit events of an actor (AuditLog.ListEvents)",
    "none (entity is the actor listed)",
);

/// The platform's own kinds.
pub const PLATFORM: Vocabulary = Vocabulary {
    prefix: "audit",
    kinds: &[AUDIT_LIST_BY_SUBJECT, AUDIT_LIST_BY_ACTOR],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_is_documented_only_by_its_table_row_with_its_action() {
        let row = format!(
            "| `{}` | {} | who listed | whose |",
            AUDIT_LIST_BY_SUBJECT.code(),
            AUDIT_LIST_BY_SUBJECT.action()
        );
        assert_eq!(
            PLATFORM.undocumented_in(&row),
            [AUDIT_LIST_BY_ACTOR.code()],
            "one row documents one kind"
        );
        // The code named elsewhere, or with another action, is not its row.
        let loose = format!(
            "`{}` and `{}`",
            AUDIT_LIST_BY_SUBJECT.code(),
            AUDIT_LIST_BY_ACTOR.code()
        );
        assert_eq!(PLATFORM.undocumented_in(&loose).len(), 2);
        let wrong = format!("| `{}` | create |", AUDIT_LIST_BY_SUBJECT.code());
        assert_eq!(PLATFORM.undocumented_in(&wrong).len(), 2);
    }

    #[test]
    fn the_platform_vocabulary_is_well_formed() {
        assert_eq!(PLATFORM.problems(), Vec::<String>::new());
        assert_eq!(
            PLATFORM.get("audit.events.list_by_actor"),
            Some(AUDIT_LIST_BY_ACTOR)
        );
        assert_eq!(PLATFORM.get("audit.events"), None);
    }

    #[test]
    fn problems_are_named() {
        const BAD: Vocabulary = Vocabulary {
            prefix: "x",
            kinds: &[
                Kind::new("x.ok", Action::Read, "w", "s"),
                Kind::new("x.ok", Action::Read, "w", "s"),
                Kind::new("y.other", Action::Read, "w", "s"),
                Kind::new("x.Upper", Action::Read, "w", "s"),
                Kind::new("x", Action::Read, "w", "s"),
                Kind::new("x.undocumented", Action::Read, "", "s"),
            ],
        };
        let p = BAD.problems();
        assert_eq!(p.len(), 5, "{p:?}");
        assert!(p[0].contains("x.ok: declared twice"), "{p:?}");
        assert!(p[1].starts_with("y.other"), "{p:?}");
        assert!(p[2].starts_with("x.Upper"), "{p:?}");
        assert!(p[3].starts_with("x:"), "{p:?}");
        assert!(p[4].contains("undocumented"), "{p:?}");
        assert!(BAD
            .markdown_rows()
            .starts_with("| `x.ok` | read | w | s |\n"));
    }
}
