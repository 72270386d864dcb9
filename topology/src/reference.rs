//! Checks that `topology/CONFIGURATION.md`, the configuration reference, lists every key of
//! the edge's and the origin's configuration files with its true default.

/// Every leaf key of `value` as a dotted path, with its value. `opaque` keys are leaves
/// whatever their value (a choice such as `backend`, a map the user fills).
fn leaves(
    prefix: &str,
    value: &serde_json::Value,
    opaque: &[&str],
    out: &mut Vec<(String, serde_json::Value)>,
) {
    match value {
        serde_json::Value::Object(map) if !opaque.contains(&prefix) && !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&path, v, opaque, out);
            }
        }
        _ => out.push((prefix.to_string(), value.clone())),
    }
}

/// The rows of the table under the heading `title`: key → default cell.
fn rows(page: &str, title: &str) -> std::collections::BTreeMap<String, String> {
    let section = page
        .split("\n## ")
        .find(|s| s.starts_with(title))
        .unwrap_or_else(|| panic!("no section {title:?}"));
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            Some((key.to_string(), cells.get(1)?.trim().to_string()))
        })
        .collect()
}

/// Whether the default cell `cell` says `value` (sizes may be written `256MiB`).
fn says(key: &str, cell: &str, value: &serde_json::Value) -> bool {
    let cell = cell.trim_matches('`');
    match value {
        serde_json::Value::Null => cell.starts_with("none"),
        serde_json::Value::Bool(b) => cell == b.to_string(),
        serde_json::Value::Number(n) if key.contains("bytes") => {
            tessera_origin_proto::size::parse_size(cell).ok() == n.as_u64()
        }
        serde_json::Value::Number(n) => cell.replace('_', "") == n.to_string(),
        serde_json::Value::String(s) => cell == format!("{s:?}"),
        serde_json::Value::Array(a) if a.is_empty() => cell == "[]",
        serde_json::Value::Object(o) if o.is_empty() => cell == "{}",
        _ => false,
    }
}

fn check(title: &str, config: serde_json::Value, opaque: &[&str], unchecked: &[&str]) {
    let page = include_str!("../CONFIGURATION.md");
    let rows = rows(page, title);
    let mut keys = Vec::new();
    leaves("", &config, opaque, &mut keys);
    let mut wrong = Vec::new();
    for (key, value) in &keys {
        match rows.get(key) {
            None => wrong.push(format!("missing: | `{key}` | {value} |")),
            Some(cell) if !unchecked.contains(&key.as_str()) && !says(key, cell, value) => wrong
                .push(format!(
                    "`{key}`: the page says {cell}, the default is {value}"
                )),
            Some(_) => {}
        }
    }
    for key in rows.keys() {
        if !keys.iter().any(|(k, _)| k == key) && !unchecked.contains(&key.as_str()) {
            wrong.push(format!("`{key}` is listed but is no key"));
        }
    }
    assert!(wrong.is_empty(), "{title}:\n{}", wrong.join("\n"));
}

#[test]
fn the_reference_lists_every_edge_key_with_its_default() {
    check(
        "Edge",
        serde_json::to_value(tessera_edge::EdgeConfig::default()).unwrap(),
        &["backend", "upstreams"],
        &["backend", "memory", "disk"],
    );
}

#[test]
fn the_reference_lists_every_origin_key_with_its_default() {
    let mut config = serde_json::to_value(tessera_origin::OriginConfig::default()).unwrap();
    // The cluster's keys are documented with their defaults (the section is optional).
    config["cluster"] =
        serde_json::to_value(tessera_origin::cluster::ClusterConfig::default()).unwrap();
    check("Origin", config, &[], &["cluster.me", "cluster.nodes"]);
}

#[test]
fn the_readme_example_is_a_valid_edge_file() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("```toml\n")
        .find(|b| b.starts_with("# edge.toml"))
        .and_then(|rest| rest.split("```").next())
        .expect("the README's edge.toml example");
    let config: tessera_edge::EdgeConfig = toml::from_str(block).unwrap();
    assert_eq!(config.memory_bytes, 1 << 30);
    assert!(config.https.is_some() && config.admin.is_some());
}
