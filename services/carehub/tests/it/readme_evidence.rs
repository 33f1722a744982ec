//! The README's "HIPAA evidence" table is evidence only if every test it names exists and runs:
//! for each `path/from/the/repo.rs::test_name` in the table, the file exists, the function is
//! a test (`#[test]`, `#[tokio::test]`, `#[sqlx::test]`, ...) that is not `#[ignore]`d, and the
//! file is compiled into a test binary of a workspace member, which is what `scripts/test.sh`
//! runs (`cargo nextest run --workspace`). Every safeguard and right the table must cover has a
//! row naming at least one test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

const SECTION: &str = "## HIPAA evidence";

/// The citations the table must have a row for: 45 CFR 164.312's technical safeguards and the
/// patient's rights of 164.524, 164.526 and 164.528.
const REQUIRED: &[&str] = &[
    "164.312(a)(2)(i)",
    "164.312(a)(2)(ii)",
    "164.312(a)(2)(iii)",
    "164.312(a)(2)(iv)",
    "164.312(b)",
    "164.312(c)(1)",
    "164.312(d)",
    "164.312(e)(1)",
    "164.524",
    "164.526",
    "164.528",
];

#[derive(Debug, PartialEq)]
struct TestRef {
    file: String,
    name: String,
}

#[derive(Debug)]
struct Row {
    citation: String,
    tests: Vec<TestRef>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The text under `heading` up to the next heading of the same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc.match_indices(heading).map(|(i, _)| i).find(|&i| {
        (i == 0 || doc[..i].ends_with('\n')) && doc[i + heading.len()..].starts_with('\n')
    })?;
    let body = &doc[start + heading.len()..];
    let end = body
        .match_indices("\n#")
        .map(|(i, _)| i)
        .find(|&i| {
            let hashes = body[i + 1..].chars().take_while(|&c| c == '#').count();
            hashes <= 2 && body[i + 1 + hashes..].starts_with(' ')
        })
        .unwrap_or(body.len());
    Some(&body[..end])
}

/// A table line's cells, split at the `|` that are not escaped.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|');
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            _ => out.last_mut().unwrap().push(c),
        }
    }
    out.iter().map(|c| c.trim().to_owned()).collect()
}

/// The spans between backticks.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `path/to/file.rs::name`, or None when the span is not a test name of that form.
fn test_ref(span: &str) -> Option<TestRef> {
    let (file, name) = span.split_once(".rs::")?;
    let ok_path = !file.is_empty()
        && !file.starts_with('/')
        && file.split('/').all(|part| !part.is_empty() && part != "..")
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '.'));
    (ok_path && is_ident(name)).then(|| TestRef {
        file: format!("{file}.rs"),
        name: name.to_owned(),
    })
}

/// The table's rows (after its header and separator line), or what is wrong with its shape.
fn rows(section: &str) -> Result<Vec<Row>, Vec<String>> {
    let lines: Vec<&str> = section
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('|'))
        .take_while(|l| l.trim_start().starts_with('|'))
        .collect();
    if lines.len() < 3 {
        return Err(vec!["no table with a header, a separator and rows".into()]);
    }
    let width = cells(lines[0]).len();
    if width != 3 {
        return Err(vec![format!(
            "the table has {width} columns, expected safeguard | mechanism | tests"
        )]);
    }
    let mut problems = Vec::new();
    let mut out = Vec::new();
    for line in &lines[2..] {
        let row = cells(line);
        if row.len() != width {
            problems.push(format!(
                "a row has {} cells, not {width}: {line}",
                row.len()
            ));
            continue;
        }
        let Some(citation) = row[0]
            .split_whitespace()
            .next()
            .map(|c| c.trim_matches('*').to_owned())
            .filter(|c| c.starts_with("164."))
        else {
            problems.push(format!("a row names no 164.x citation first: {}", row[0]));
            continue;
        };
        let mut tests = Vec::new();
        for span in code_spans(&row[2]) {
            match test_ref(span) {
                Some(t) => tests.push(t),
                None => problems.push(format!(
                    "{citation}: `{span}` is not a test name of the form path/from/the/repo.rs::test_fn"
                )),
            }
        }
        out.push(Row { citation, tests });
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Text before `end` with trailing blank space and line comments removed.
fn strip_trailing_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_end();
        let line_start = text.rfind('\n').map_or(0, |i| i + 1);
        if text.len() > line_start && text[line_start..].trim_start().starts_with("//") {
            text = &text[..line_start];
        } else {
            return text;
        }
    }
}

/// The attributes (the text inside `#[...]`) written directly above the item that starts at
/// `at`, doc and line comments between them allowed.
fn attributes_above(src: &str, at: usize) -> Vec<&str> {
    let mut text = &src[..at];
    let mut attrs = Vec::new();
    loop {
        text = strip_trailing_comments(text);
        if !text.ends_with(']') {
            return attrs;
        }
        let bytes = text.as_bytes();
        let mut depth = 0usize;
        let mut open = None;
        for i in (0..bytes.len()).rev() {
            match bytes[i] {
                b']' => depth += 1,
                b'[' => {
                    depth -= 1;
                    if depth == 0 {
                        open = Some(i);
                        break;
                    }
                }
                _ => {}
            }
        }
        match open {
            Some(i) if i > 0 && bytes[i - 1] == b'#' => {
                attrs.push(&text[i + 1..text.len() - 1]);
                text = &text[..i - 1];
            }
            _ => return attrs,
        }
    }
}

fn attr_path(attr: &str) -> &str {
    attr.trim()
        .split(|c: char| c == '(' || c == '=' || c.is_whitespace())
        .next()
        .unwrap_or("")
}

fn is_test_attr(attr: &str) -> bool {
    let path = attr_path(attr);
    path == "test" || path.ends_with("::test")
}

fn is_ignore_attr(attr: &str) -> bool {
    let path = attr_path(attr);
    path == "ignore" || (path == "cfg_attr" && attr.contains("ignore"))
}

/// Why `name` in `src` is not a test that runs, or None when it is one.
fn test_fn_problem(src: &str, name: &str) -> Option<String> {
    let needle = format!("fn {name}(");
    let mut found = false;
    for (at, _) in src.match_indices(&needle) {
        if at > 0 && !src[..at].ends_with(char::is_whitespace) {
            continue;
        }
        found = true;
        let mut head = src[..at].trim_end();
        for qualifier in ["async", "pub(crate)", "pub(super)", "pub"] {
            head = head.strip_suffix(qualifier).unwrap_or(head).trim_end();
        }
        let attrs = attributes_above(src, head.len());
        if attrs.iter().any(|a| is_test_attr(a)) && !attrs.iter().any(|a| is_ignore_attr(a)) {
            return None;
        }
        if attrs.iter().any(|a| is_ignore_attr(a)) {
            return Some(format!(
                "`{name}` is #[ignore]d, so scripts/test.sh skips it"
            ));
        }
    }
    Some(if found {
        format!("`{name}` has no test attribute (#[test], #[tokio::test], ...)")
    } else {
        format!("no `fn {name}(` in the file")
    })
}

/// The string values of the root manifest's `members = [...]`.
fn workspace_members(root_manifest: &str) -> Vec<String> {
    let Some(at) = root_manifest
        .match_indices("members")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || root_manifest[..i].ends_with('\n'))
    else {
        return Vec::new();
    };
    let rest = &root_manifest[at..];
    let (Some(open), Some(close)) = (rest.find('['), rest.find(']')) else {
        return Vec::new();
    };
    rest[open + 1..close]
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn declares_mod(main_rs: &str, module: &str) -> bool {
    main_rs.lines().any(|l| {
        let l = l.trim();
        l == format!("mod {module};") || l == format!("pub mod {module};")
    })
}

/// Why `file` (relative to `repo`) is not compiled into a test binary of a workspace member,
/// or None when it is.
fn compiled_problem(repo: &Path, file: &str) -> Option<String> {
    let path = repo.join(file);
    let crate_dir = path.ancestors().skip(1).find(|dir| {
        fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|m| m.contains("[package]"))
    });
    let Some(crate_dir) = crate_dir.filter(|d| d.starts_with(repo)) else {
        return Some(format!("{file} belongs to no crate"));
    };
    let crate_rel = crate_dir
        .strip_prefix(repo)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let root_manifest = fs::read_to_string(repo.join("Cargo.toml")).unwrap_or_default();
    if !crate_rel.is_empty() && !workspace_members(&root_manifest).contains(&crate_rel) {
        return Some(format!(
            "{file}: its crate {crate_rel} is not a workspace member, so `cargo nextest run --workspace` does not build it"
        ));
    }
    let manifest = fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap_or_default();
    let in_crate = path
        .strip_prefix(crate_dir)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let src = fs::read_to_string(&path).unwrap_or_default();
    if in_crate.starts_with("src/") {
        return (!src.contains("#[cfg(test)]"))
            .then(|| format!("{file} has no #[cfg(test)]: its tests are not unit tests"));
    }
    let autotests = !manifest.replace(' ', "").contains("autotests=false");
    let is_target = |rel: &str, auto: bool| {
        (auto && autotests)
            || (manifest.contains("[[test]]") && manifest.contains(&format!("\"{rel}\"")))
    };
    let parts: Vec<&str> = in_crate.split('/').collect();
    if parts.len() == 2 && parts[0] == "tests" {
        return (!is_target(&in_crate, true))
            .then(|| format!("{file} is not a test target of its crate (autotests = false)"));
    }
    let stem = Path::new(file)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = Path::new(&in_crate).parent().unwrap_or(Path::new(""));
    let main_rel = dir.join("main.rs").to_string_lossy().into_owned();
    let Ok(main_rs) = fs::read_to_string(crate_dir.join(&main_rel)) else {
        return Some(format!(
            "{file}: no main.rs beside it to make it part of a test binary"
        ));
    };
    if !declares_mod(&main_rs, &stem) {
        return Some(format!("{file}: {main_rel} does not declare `mod {stem};`"));
    }
    let auto = parts.len() == 3 && parts[0] == "tests";
    (!is_target(&main_rel, auto)).then(|| {
        format!("{file}: {main_rel} is not a test target of its crate (no [[test]] with that path)")
    })
}

/// Everything wrong with the HIPAA table of `readme`, checked against the files under `repo`.
fn problems(repo: &Path, readme: &str) -> Vec<String> {
    let Some(text) = section(readme, SECTION) else {
        return vec![format!("no `{SECTION}` section")];
    };
    let rows = match rows(text) {
        Ok(rows) => rows,
        Err(problems) => return problems,
    };
    let mut problems = Vec::new();
    for required in REQUIRED {
        match rows.iter().find(|r| r.citation == *required) {
            None => problems.push(format!("no row for {required}")),
            Some(row) if row.tests.is_empty() => problems.push(format!("{required} names no test")),
            Some(_) => {}
        }
    }
    for row in &rows {
        if !REQUIRED.contains(&row.citation.as_str()) {
            problems.push(format!(
                "{}: not a citation this table covers",
                row.citation
            ));
        }
        for t in &row.tests {
            let Ok(src) = fs::read_to_string(repo.join(&t.file)) else {
                problems.push(format!(
                    "{}: {}::{}: no such file",
                    row.citation, t.file, t.name
                ));
                continue;
            };
            if let Some(p) = test_fn_problem(&src, &t.name) {
                problems.push(format!("{}: {}::{}: {p}", row.citation, t.file, t.name));
            }
            if let Some(p) = compiled_problem(repo, &t.file) {
                problems.push(format!("{}: {}::{}: {p}", row.citation, t.file, t.name));
            }
        }
    }
    problems
}

#[test]
fn hipaa_table_names_only_tests_that_exist_and_run() {
    let repo = repo_root();
    let readme =
        fs::read_to_string(repo.join("README.md")).expect("README.md at the repository root");
    let text = section(&readme, SECTION).expect("the README has a HIPAA evidence section");
    let named: usize = rows(text).unwrap().iter().map(|r| r.tests.len()).sum();
    assert!(named >= REQUIRED.len(), "{named} test names in the table");
    let problems = problems(&repo, &readme);
    assert!(
        problems.is_empty(),
        "the README's HIPAA evidence table is not backed by running tests:\n  {}",
        problems.join("\n  ")
    );
}

/// A repository in miniature: a workspace with one member whose test binary has one module.
fn fake_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    write("Cargo.toml", "[workspace]\nmembers = [\"svc\"]\n");
    write("svc/Cargo.toml", "[package]\nname = \"svc\"\n");
    write("svc/tests/it/main.rs", "mod real;\n// mod orphan;\n");
    write(
        "svc/tests/it/real.rs",
        "/// Runs.\n#[tokio::test(flavor = \"multi_thread\")]\n#[allow(unused)]\nasync fn passes() {}\n\n\
         #[tokio::test]\n#[ignore = \"needs [a] vault\"]\nasync fn skipped() {}\n\n\
         fn helper() {}\n",
    );
    write("svc/tests/it/orphan.rs", "#[test]\nfn never_built() {}\n");
    write(
        "svc/src/lib.rs",
        "pub fn f() {}\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn unit() {}\n}\n",
    );
    write("outside/tests/it/main.rs", "mod stray;\n");
    write("outside/Cargo.toml", "[package]\nname = \"outside\"\n");
    write(
        "outside/tests/it/stray.rs",
        "#[test]\nfn not_in_the_workspace() {}\n",
    );
    dir
}

/// A README whose table has a row per required citation, the first naming `tests`.
fn readme_with(tests: &str) -> String {
    let mut doc = String::from(
        "# x\n\n## HIPAA evidence\n\n| safeguard | mechanism | tests |\n|---|---|---|\n",
    );
    for (i, c) in REQUIRED.iter().enumerate() {
        let cell = if i == 0 {
            tests
        } else {
            "`svc/tests/it/real.rs::passes`"
        };
        doc.push_str(&format!("| **{c}** x | `platform::x` does it | {cell} |\n"));
    }
    doc.push_str("\n## Next\n\n| a | b | c |\n|---|---|---|\n| 164.999 | x | `nope.rs::gone` |\n");
    doc
}

#[test]
fn hipaa_check_rejects_a_missing_test() {
    let repo = fake_repo();
    let ok = readme_with("`svc/tests/it/real.rs::passes`<br>`svc/src/lib.rs::unit`");
    assert_eq!(problems(repo.path(), &ok), Vec::<String>::new());

    let made_up =
        readme_with("`svc/tests/it/real.rs::passes`<br>`svc/tests/it/real.rs::made_up_test`");
    assert_eq!(
        problems(repo.path(), &made_up),
        ["164.312(a)(2)(i): svc/tests/it/real.rs::made_up_test: no `fn made_up_test(` in the file"]
    );

    let cases = [
        (
            "`svc/tests/it/gone.rs::passes`",
            "svc/tests/it/gone.rs::passes: no such file",
        ),
        ("`svc/tests/it/real.rs::skipped`", "`skipped` is #[ignore]d"),
        (
            "`svc/tests/it/real.rs::helper`",
            "`helper` has no test attribute",
        ),
        (
            "`svc/tests/it/orphan.rs::never_built`",
            "main.rs does not declare `mod orphan;`",
        ),
        (
            "`outside/tests/it/stray.rs::not_in_the_workspace`",
            "outside is not a workspace member",
        ),
        ("`svc/tests/it/real.rs`", "is not a test name of the form"),
        ("no test at all", "164.312(a)(2)(i) names no test"),
    ];
    for (cell, expected) in cases {
        let found = problems(repo.path(), &readme_with(cell));
        assert!(
            found.len() == 1 && found[0].contains(expected),
            "{cell}: expected one problem with {expected:?}, got {found:?}"
        );
    }

    let without_row = ok.replace("| **164.528** x |", "| **164.999** x |");
    assert_eq!(
        problems(repo.path(), &without_row),
        [
            "no row for 164.528",
            "164.999: not a citation this table covers"
        ]
    );
    assert_eq!(
        problems(repo.path(), "# x\n"),
        ["no `## HIPAA evidence` section"]
    );
}
