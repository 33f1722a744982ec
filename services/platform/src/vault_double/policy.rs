//! ACL policies of the Vault double: the `path "<glob>" { capabilities = [...] }` subset of
//! Vault's HCL policy syntax, with `*` (prefix) and `+` (one segment) globs.

use super::State;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Capability {
    Read,
    List,
    Update,
    Delete,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    rules: Vec<(String, Vec<String>)>,
}

impl Policy {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("path") {
            rest = &rest[start + 4..];
            let open = rest.find('"').ok_or("expected a quoted path")?;
            let after = &rest[open + 1..];
            let close = after.find('"').ok_or("unterminated path")?;
            let glob = after[..close].to_owned();
            let after = &after[close + 1..];
            let body_start = after.find('{').ok_or("expected `{`")?;
            let body_end = after.find('}').ok_or("expected `}`")?;
            let body = &after[body_start + 1..body_end];
            let caps_at = body.find("capabilities").ok_or("expected capabilities")?;
            let list = &body[caps_at..];
            let lb = list.find('[').ok_or("expected `[`")?;
            let rb = list.find(']').ok_or("expected `]`")?;
            let caps = list[lb + 1..rb]
                .split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .filter(|c| !c.is_empty())
                .collect();
            rules.push((glob, caps));
            rest = &after[body_end + 1..];
        }
        Ok(Policy { rules })
    }

    fn capabilities(&self, path: &str) -> Option<&[String]> {
        // Vault picks the most specific matching rule; longest glob is close enough here.
        self.rules
            .iter()
            .filter(|(glob, _)| glob_matches(glob, path))
            .max_by_key(|(glob, _)| glob.len())
            .map(|(_, caps)| caps.as_slice())
    }
}

fn glob_matches(glob: &str, path: &str) -> bool {
    let (glob, prefix) = match glob.strip_suffix('*') {
        Some(g) => (g, true),
        None => (glob, false),
    };
    let glob_segs: Vec<&str> = glob.split('/').collect();
    let path_segs: Vec<&str> = path.split('/').collect();
    if !prefix && glob_segs.len() != path_segs.len() {
        return false;
    }
    if path_segs.len() < glob_segs.len() {
        return false;
    }
    let last = glob_segs.len() - 1;
    for (i, g) in glob_segs.iter().enumerate() {
        let p = path_segs[i];
        if *g == "+" {
            continue;
        }
        if i == last && prefix {
            if !p.starts_with(g) {
                return false;
            }
        } else if *g != p {
            return false;
        }
    }
    true
}

pub(crate) fn allowed(state: &State, policies: &[String], path: &str, cap: Capability) -> bool {
    if policies.iter().any(|p| p == "root") {
        return true;
    }
    let mut caps: Vec<&str> = Vec::new();
    for name in policies {
        if let Some(found) = state.policies.get(name).and_then(|p| p.capabilities(path)) {
            caps.extend(found.iter().map(String::as_str));
        }
    }
    if caps.contains(&"deny") {
        return false;
    }
    match cap {
        Capability::Read => caps.contains(&"read"),
        Capability::List => caps.contains(&"list"),
        // Vault checks `create` for new paths and `update` for existing ones; the double accepts
        // either for a write.
        Capability::Update => caps.contains(&"update") || caps.contains(&"create"),
        Capability::Delete => caps.contains(&"delete"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_vault() {
        assert!(glob_matches(
            "secret/data/carehub/identity/*",
            "secret/data/carehub/identity/kek"
        ));
        assert!(!glob_matches(
            "secret/data/carehub/identity/*",
            "secret/data/carehub/billing/kek"
        ));
        assert!(glob_matches(
            "secret/data/carehub/+/kek",
            "secret/data/carehub/billing/kek"
        ));
        assert!(glob_matches(
            "pki/issue/carehub-identity",
            "pki/issue/carehub-identity"
        ));
        assert!(!glob_matches(
            "pki/issue/carehub-identity",
            "pki/issue/carehub-identity2"
        ));
        assert!(glob_matches(
            "secret/data/carehub/id*",
            "secret/data/carehub/identity/kek"
        ));
    }

    #[test]
    fn hcl_subset_parses() {
        let p = Policy::parse(
            "path \"secret/data/carehub/identity/*\" {\n  capabilities = [\"read\"]\n}\npath \"pki/issue/carehub-identity\" { capabilities = [\"update\"] }\n",
        )
        .unwrap_or_default();
        assert_eq!(p.rules.len(), 2);
        assert_eq!(
            p.capabilities("pki/issue/carehub-identity"),
            Some(&["update".to_owned()][..])
        );
    }
}
