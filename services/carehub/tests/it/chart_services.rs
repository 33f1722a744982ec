//! The chart deploys exactly the binary's services: `carehub services` (the one list in
//! src/services.rs) must name the same services as the `services:` block of
//! charts/carehub/values.yaml and the templates that render a service
//! (`include "carehub.service" (dict ... "name" "<service>")`). A service added to one and not
//! the other fails here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/carehub")
}

/// The keys of the top-level `services:` block (two-space indented names).
fn values_services(values: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut inside = false;
    for line in values.lines() {
        if line.trim_end() == "services:" {
            inside = true;
            continue;
        }
        let top_level = !line.is_empty() && !line.starts_with([' ', '#']);
        if inside && top_level {
            break;
        }
        if !inside {
            continue;
        }
        if let Some(rest) = line.strip_prefix("  ") {
            if let Some((name, _)) = rest.split_once(':') {
                let is_name = !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                if is_name {
                    found.insert(name.to_owned());
                }
            }
        }
    }
    found
}

/// Services rendered by a template through the shared helper.
fn template_services(template: &str) -> BTreeSet<String> {
    const CALL: &str = r#"include "carehub.service" (dict "root" $ "name" ""#;
    template
        .match_indices(CALL)
        .filter_map(|(at, _)| {
            let rest = &template[at + CALL.len()..];
            rest.split_once('"').map(|(name, _)| name.to_owned())
        })
        .collect()
}

fn binary_services() -> BTreeSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_carehub"))
        .arg("services")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Problems between the binary's list and the chart's.
fn compare(
    binary: &BTreeSet<String>,
    values: &BTreeSet<String>,
    templates: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for name in binary.difference(values) {
        problems.push(format!(
            "{name} is served by the binary but has no services.{name} block in values.yaml"
        ));
    }
    for name in values.difference(binary) {
        problems.push(format!(
            "services.{name} in values.yaml is not a service of the binary (`carehub services`)"
        ));
    }
    for name in binary.difference(templates) {
        problems.push(format!(
            "{name} has no templates/{name}.yaml including carehub.service"
        ));
    }
    for name in templates.difference(binary) {
        problems.push(format!(
            "a template renders {name}, which the binary does not serve"
        ));
    }
    problems
}

#[test]
fn the_chart_deploys_the_binarys_services() {
    let values = values_services(&std::fs::read_to_string(chart().join("values.yaml")).unwrap());
    let mut templates = BTreeSet::new();
    for entry in std::fs::read_dir(chart().join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            templates.extend(template_services(&std::fs::read_to_string(&path).unwrap()));
        }
    }
    let binary = binary_services();
    assert!(binary.contains("identity"), "{binary:?}");
    let problems = compare(&binary, &values, &templates);
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_service_in_one_list_only_is_caught() {
    let values = "image:\n  tag: x\nservices:\n  identity:\n    enabled: true\n  # a comment\n  billing:\n    calls: []\nnetworkPolicy:\n  enabled: true\n";
    let from_values = values_services(values);
    assert_eq!(
        from_values,
        BTreeSet::from(["identity".to_owned(), "billing".to_owned()])
    );
    let template = r#"{{ include "carehub.service" (dict "root" $ "name" "identity") }}"#;
    let from_templates = template_services(template);
    assert_eq!(from_templates, BTreeSet::from(["identity".to_owned()]));
    let binary = BTreeSet::from(["identity".to_owned(), "scratch".to_owned()]);
    let problems = compare(&binary, &from_values, &from_templates);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("scratch is served by the binary but has no services.scratch block")
    );
    assert!(problems[1].contains("services.billing in values.yaml is not a service of the binary"));
    assert!(problems[2].contains("scratch has no templates/scratch.yaml"));
}
