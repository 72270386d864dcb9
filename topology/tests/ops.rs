//! The operations files in `topology/`: the Prometheus alert rules pass `promtool` (syntax
//! and the unit tests in `alerts_test.yml`), and every metric they and the Grafana
//! dashboard query is one the nodes export.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn topology_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(topology_dir())
        .output()
        .expect("promtool is missing: install the Debian package `prometheus` (.ci/run does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let out = promtool(&["check", "rules", "alerts.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every `tessera_…` string literal in the nodes' sources, with the series a histogram adds.
fn exported_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let root = topology_dir().join("..");
    let mut stack = vec![
        root.join("edge/src"),
        root.join("origin/src"),
        root.join("plugins/host/src"),
    ];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for name in metric_tokens(&text, "\"") {
                    for suffix in ["", "_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    names
}

/// The `tessera_[a-z0-9_]+` tokens in `text` (after `lead` when it is not empty).
fn metric_tokens(text: &str, lead: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let pat = format!("{lead}tessera_");
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let start = i + lead.len();
        let end = rest[start..]
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .map_or(rest.len(), |e| start + e);
        out.insert(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

fn used_in(path: &Path) -> BTreeSet<String> {
    metric_tokens(&std::fs::read_to_string(path).unwrap(), "")
        .into_iter()
        // Alert names and the dashboard's uid are not metrics.
        .filter(|n| n.starts_with("tessera_edge_") || n.starts_with("tessera_origin_"))
        .filter(|n| !n.ends_with('_')) // "tessera_edge_*" in prose
        .collect()
}

#[test]
fn the_alerts_and_the_dashboard_query_only_metrics_that_exist() {
    let exported = exported_names();
    assert!(
        exported.contains("tessera_edge_requests_total"),
        "{exported:?}"
    );
    for file in ["alerts.yml", "alerts_test.yml", "grafana-dashboard.json"] {
        let used = used_in(&topology_dir().join(file));
        assert!(used.len() >= 5, "{file} names too few metrics: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics no node exports: {unknown:?}"
        );
    }
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(topology_dir().join("grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Hit ratio per tier",
        "Edge latency percentiles per protocol",
        "Replication health",
        "Dedup and compression",
    ] {
        assert!(titles.contains(&want), "{titles:?}");
    }
}
