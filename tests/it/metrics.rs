//! The chart's PrometheusRule and Grafana dashboard query only metrics a real operator
//! exports, with a sample before anything happened (so an alert never sits on a name that
//! does not exist, or on a family that appears only after the first event).

use std::collections::BTreeSet;

use vc_envtest::ControlPlane;

use crate::support::scope::Scope;

/// Metric names in PromQL `text`: identifiers starting with one of `prefixes`, without the
/// histogram suffixes (the family's name is what `/metrics` describes).
fn metric_names(text: &str, prefixes: &[&str]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !ident(bytes[i - 1]);
        if starts_word && prefixes.iter().any(|p| text[i..].starts_with(p)) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            let name = &text[i..end];
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            names.insert(name.to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every PromQL expression of the rule template (`expr:` values, block scalars included).
fn rule_exprs(template: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = template.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line
            .trim_start()
            .trim_start_matches("- ")
            .strip_prefix("expr:")
        else {
            continue;
        };
        // The key's column: its value's lines are deeper, its siblings (`for:`) are not.
        let indent = line.len() - rest.len() - "expr:".len();
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent;
            if !deeper || next.trim().is_empty() {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        exprs.push(expr.trim().to_string());
    }
    exprs
}

/// Every `expr` of the dashboard's panels and the queries of its variables.
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(dashboard, &mut exprs);
    exprs
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(vehicle_connect_attempt_duration_seconds_bucket{kind="ftp"}[5m]))) / x_vehicle_connect_no + process_open_fds"#,
        &["vehicle_connect_", "process_"],
    );
    let expected: BTreeSet<String> = [
        "vehicle_connect_attempt_duration_seconds",
        "process_open_fds",
    ]
    .map(String::from)
    .into();
    assert_eq!(names, expected);
    let exprs = rule_exprs(
        "      - expr: |\n          a_total\n            / b\n        for: 5m\n      - expr: c > 0\n",
    );
    assert_eq!(exprs, ["a_total / b", "c > 0"]);
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let chart = root.join("charts/vehicle-connect");
    let template = std::fs::read_to_string(chart.join("templates/prometheusrule.yaml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("dashboards/vehicle-connect.json")).unwrap(),
    )
    .unwrap();
    let prefixes = ["vehicle_connect_", "process_"];
    let rule: BTreeSet<String> = rule_exprs(&template)
        .iter()
        .flat_map(|e| metric_names(e, &prefixes))
        .collect();
    let board: BTreeSet<String> = dashboard_exprs(&dashboard)
        .iter()
        .flat_map(|e| metric_names(e, &prefixes))
        .collect();
    assert!(
        rule.len() >= 6,
        "too few metrics found in the rule: {rule:?}"
    );
    assert!(
        board.len() >= 15,
        "too few metrics found in the dashboard: {board:?}"
    );

    let cp = ControlPlane::shared();
    cp.install_crds(&root.join("crds")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let op =
        crate::support::process::start(cp, dir.path().join("data"), &Scope::new("metrics")).await;
    let text = crate::support::process::metrics(&op).await;
    // prometheus-client prints nothing of a family without a series, not even `# TYPE`;
    // a histogram's samples are its `_bucket`, `_sum` and `_count`.
    let sampled = |name: &str| {
        text.lines().any(|l| {
            ["", "_bucket", "_count"].iter().any(|suffix| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(suffix))
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
        })
    };
    let mut missing = Vec::new();
    for (what, names) in [("alert rule", &rule), ("dashboard", &board)] {
        missing.extend(
            names
                .iter()
                .filter(|n| !sampled(n))
                .map(|n| format!("{n} ({what})")),
        );
    }
    assert!(
        missing.is_empty(),
        "not exported by the operator: {missing:?}\n/metrics:\n{text}"
    );
}
