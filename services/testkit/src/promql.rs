//! The metric names the chart's alerts (`files/prometheus-rules.yaml`) and dashboard
//! (`files/grafana-dashboard.json`) use, against what the services' `/metrics` export: an alert
//! on a metric no service exports never fires, and nothing else would tell.
//!
//! Expressions are parsed with the `promql-parser` crate (GreptimeTeam's PromQL parser), not with
//! a pattern of our own, so that a name inside a label matcher or a function is told apart from
//! a metric. `scripts/check-chart.sh` makes the same check, with the parser's Python bindings,
//! against the committed `files/exported-metrics.txt`; `cargo test -p carehub --test it
//! monitoring` keeps that list equal to what the services export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use promql_parser::label::MatchOp;
use promql_parser::parser::{Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};
use yaml_rust2::{Yaml, YamlLoader};

/// The rule groups, relative to the chart directory.
pub const RULES_FILE: &str = "files/prometheus-rules.yaml";
/// The Grafana dashboard, relative to the chart directory.
pub const DASHBOARD_FILE: &str = "files/grafana-dashboard.json";
/// The committed list of exported metric names, relative to the chart directory.
pub const EXPORTED_FILE: &str = "files/exported-metrics.txt";

/// Collects the metric name of every selector of an expression.
struct Names {
    names: Vec<String>,
}

impl Names {
    fn selector(&mut self, vs: &VectorSelector) -> Result<(), String> {
        if let Some(name) = &vs.name {
            self.names.push(name.clone());
            return Ok(());
        }
        // `{__name__="x"}` names its metric too; a selector by other labels only does not.
        let by_name = vs
            .matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal));
        match by_name {
            Some(m) => {
                self.names.push(m.value.clone());
                Ok(())
            }
            None => Err(format!("the selector {vs} names no metric")),
        }
    }
}

impl ExprVisitor for Names {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(vs) => self.selector(vs)?,
            Expr::MatrixSelector(ms) => self.selector(&ms.vs)?,
            _ => {}
        }
        Ok(true)
    }
}

/// The metric names one PromQL expression selects.
pub fn expr_metric_names(expr: &str) -> anyhow::Result<Vec<String>> {
    let ast =
        promql_parser::parser::parse(expr).map_err(|e| anyhow!("does not parse: {e}: {expr}"))?;
    let mut names = Names { names: Vec::new() };
    walk_expr(&mut names, &ast).map_err(|e| anyhow!("{e}: {expr}"))?;
    if names.names.is_empty() {
        bail!("selects no metric: {expr}");
    }
    Ok(names.names)
}

/// `(where, expression)` of every alert or recording rule in the rules file's text.
fn rule_exprs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    let docs = YamlLoader::load_from_str(text).context("the rules file is not YAML")?;
    let doc = docs.first().context("the rules file is empty")?;
    let groups = doc["groups"]
        .as_vec()
        .context("the rules file has no groups list")?;
    let mut out = Vec::new();
    for group in groups {
        let gname = group["name"].as_str().unwrap_or("?");
        let rules = group["rules"]
            .as_vec()
            .with_context(|| format!("group {gname} has no rules list"))?;
        for rule in rules {
            let name = rule["alert"]
                .as_str()
                .or_else(|| rule["record"].as_str())
                .with_context(|| format!("a rule of group {gname} has neither alert nor record"))?;
            let expr = match &rule["expr"] {
                Yaml::String(s) => s.clone(),
                other => bail!("alert {name}: expr is not a string: {other:?}"),
            };
            out.push((format!("alert {name}"), expr));
        }
    }
    Ok(out)
}

/// `(where, expression)` of every panel target in the dashboard's text.
fn dashboard_exprs(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) -> anyhow::Result<()> {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .with_context(|| format!("panel {title}: a target without expr"))?;
                let ref_id = target["refId"].as_str().unwrap_or("?");
                out.push((format!("panel {title} target {ref_id}"), expr.to_owned()));
            }
            panels(&panel["panels"], out)?;
        }
        Ok(())
    }
    let dash: serde_json::Value =
        serde_json::from_str(text).context("the dashboard is not JSON")?;
    let mut out = Vec::new();
    panels(&dash["panels"], &mut out)?;
    Ok(out)
}

/// Every metric name the chart's alerts and dashboard panels use → the alerts and panels using
/// it. Fails on a file that is missing or malformed and on an expression that does not parse.
pub fn chart_metric_names(chart_dir: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let read = |rel: &str| {
        let path = chart_dir.join(rel);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let mut exprs = rule_exprs(&read(RULES_FILE)?).context(RULES_FILE)?;
    exprs.extend(dashboard_exprs(&read(DASHBOARD_FILE)?).context(DASHBOARD_FILE)?);
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (user, expr) in exprs {
        for name in expr_metric_names(&expr).with_context(|| user.clone())? {
            let users = out.entry(name).or_default();
            if !users.contains(&user) {
                users.push(user.clone());
            }
        }
    }
    Ok(out)
}

/// The metric names a Prometheus text exposition exports, from its `# TYPE` lines: a histogram
/// or summary `x` also exports `x_bucket` (histograms), `x_sum` and `x_count`.
pub fn exported_names(metrics_text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in metrics_text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.insert(name.to_owned());
        match kind {
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            "summary" => {
                for suffix in ["_sum", "_count"] {
                    out.insert(format!("{name}{suffix}"));
                }
            }
            _ => {}
        }
    }
    out
}

/// The names the chart's alerts and dashboard use that none of `metrics_texts` (the `/metrics`
/// of running services) exports, each with the alerts and panels using it. Panics when the
/// chart's files cannot be read or parsed: that is a failed test, not a name to report.
pub fn unknown_chart_metrics(chart_dir: &Path, metrics_texts: &[String]) -> Vec<String> {
    let used = match chart_metric_names(chart_dir) {
        Ok(used) => used,
        Err(e) => panic!("the chart's monitoring files: {e:#}"),
    };
    let exported: BTreeSet<String> = metrics_texts
        .iter()
        .flat_map(|text| exported_names(text))
        .collect();
    used.into_iter()
        .filter(|(name, _)| !exported.contains(name))
        .map(|(name, users)| format!("{name} (used by {})", users.join(", ")))
        .collect()
}

/// The chart directory of this repository (`charts/carehub`).
pub fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charts/carehub")
}

/// The committed list of exported names (`files/exported-metrics.txt`): one per line, `#`
/// comments.
pub fn committed_exported_names(chart_dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    let path = chart_dir.join(EXPORTED_FILE);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP carehub_grpc_server_handling_seconds Time.
# TYPE carehub_grpc_server_handling_seconds histogram
carehub_grpc_server_handling_seconds_bucket{le=\"+Inf\"} 0
# TYPE carehub_key_cache_serving gauge
carehub_key_cache_serving{provider=\"vault\"} 1
# TYPE carehub_outbox_pending gauge
";

    fn chart(rules: &str, dashboard: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("files")).unwrap();
        std::fs::write(dir.path().join(RULES_FILE), rules).unwrap();
        std::fs::write(dir.path().join(DASHBOARD_FILE), dashboard).unwrap();
        dir
    }

    const RULES: &str = r#"
groups:
  - name: g
    rules:
      - alert: KeysFailClosed
        expr: carehub_key_cache_serving == 0
      - alert: Slow
        expr: |
          histogram_quantile(0.99, sum by (le) (rate(carehub_grpc_server_handling_seconds_bucket{method!~".*Stream.*"}[5m]))) > 0.5
"#;

    #[test]
    fn exported_names_come_from_type_lines_with_histogram_suffixes() {
        let names = exported_names(METRICS);
        let want: BTreeSet<String> = [
            "carehub_grpc_server_handling_seconds",
            "carehub_grpc_server_handling_seconds_bucket",
            "carehub_grpc_server_handling_seconds_sum",
            "carehub_grpc_server_handling_seconds_count",
            "carehub_key_cache_serving",
            "carehub_outbox_pending",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn known_names_are_found_with_their_users() {
        let dir = chart(
            RULES,
            r#"{"panels": [{"type": "row", "title": "r", "panels": [
                {"title": "Outbox", "targets": [{"refId": "A", "expr": "max by (target) (carehub_outbox_pending{service=~\"$service\"})"}]}
            ]}]}"#,
        );
        let used = chart_metric_names(dir.path()).unwrap();
        assert_eq!(
            used.keys().map(String::as_str).collect::<Vec<_>>(),
            vec![
                "carehub_grpc_server_handling_seconds_bucket",
                "carehub_key_cache_serving",
                "carehub_outbox_pending"
            ]
        );
        assert_eq!(
            used["carehub_key_cache_serving"],
            vec!["alert KeysFailClosed"]
        );
        assert_eq!(
            used["carehub_outbox_pending"],
            vec!["panel Outbox target A"]
        );
        // A label value that looks like a metric is no metric.
        assert!(!used.keys().any(|n| n.contains("Stream")));
        assert!(unknown_chart_metrics(dir.path(), &[METRICS.to_owned()]).is_empty());
    }

    #[test]
    fn an_unknown_name_is_reported_with_its_users() {
        let dir = chart(
            RULES,
            r#"{"panels": [{"title": "Pool", "targets": [{"refId": "B", "expr": "carehub_db_pool_busy / carehub_outbox_pending"}]}]}"#,
        );
        let unknown = unknown_chart_metrics(dir.path(), &[METRICS.to_owned()]);
        assert_eq!(
            unknown,
            vec!["carehub_db_pool_busy (used by panel Pool target B)"]
        );
        // Split across services: exported by any one of them is enough.
        let more = "# TYPE carehub_db_pool_busy gauge\n".to_owned();
        assert!(unknown_chart_metrics(dir.path(), &[METRICS.to_owned(), more]).is_empty());
    }

    #[test]
    fn bad_expressions_are_errors_not_names() {
        let err = expr_metric_names("sum(rate(carehub_x_total[5m])").unwrap_err();
        assert!(err.to_string().contains("does not parse"), "{err}");
        let err = expr_metric_names(r#"{service="identity"} == 1"#).unwrap_err();
        assert!(err.to_string().contains("names no metric"), "{err}");
        assert_eq!(
            expr_metric_names(r#"{__name__="carehub_x"} > 0"#).unwrap(),
            vec!["carehub_x"]
        );
        let dir = chart(
            "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(x[5 minutes])\n",
            r#"{"panels": []}"#,
        );
        let err = chart_metric_names(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("alert A"), "{err:#}");
    }
}
