//! `GET /api/v1/stats`: the edge's counters as JSON.

use crate::basics::metrics::FetchKind;
use crate::pipeline::Edge;
use crate::pipeline::outcome::{CacheResult, TIER_LABELS};

pub fn stats(edge: &Edge) -> serde_json::Value {
    let m = edge.metrics();
    // Read from the series that exist: asking for a label pair would create it, and
    // /metrics would then export combinations that cannot happen (a hit from tier none).
    use prometheus::core::Collector;
    let mut counted = std::collections::HashMap::new();
    for family in m.cache.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
                    .unwrap_or_default()
            };
            counted.insert(
                (label("result"), label("tier")),
                metric.get_counter().get_value() as u64,
            );
        }
    }
    let mut lookups = serde_json::Map::new();
    for result in CacheResult::ALL {
        let mut by_tier = serde_json::Map::new();
        for tier in TIER_LABELS {
            match counted.get(&(result.as_str().to_string(), tier.to_string())) {
                Some(&n) if n > 0 => {
                    by_tier.insert(tier.into(), n.into());
                }
                _ => {}
            }
        }
        lookups.insert(result.as_str().into(), by_tier.into());
    }
    let bytes: serde_json::Map<String, serde_json::Value> = ["memory", "disk", "origin"]
        .iter()
        .map(|s| {
            (
                s.to_string(),
                m.bytes_served.with_label_values(&[s]).get().into(),
            )
        })
        .collect();
    let fetches: serde_json::Map<String, serde_json::Value> = FetchKind::ALL
        .iter()
        .map(|k| {
            (
                k.as_str().to_string(),
                m.origin_fetches
                    .with_label_values(&[k.as_str()])
                    .get()
                    .into(),
            )
        })
        .collect();
    serde_json::json!({
        "lookups": lookups,
        "bytes_served": bytes,
        "coalesced": m.coalesced.get(),
        "origin_fetches": fetches,
        "corrupt_chunks": m.corrupt_chunks.get(),
        "memory": {
            "used_bytes": edge.cache().memory_usage(),
            "capacity_bytes": edge.cache().memory_capacity(),
        },
        "disk": {
            "used_bytes": m.ssd_used_bytes(),
            "capacity_bytes": m.ssd_bytes.get(),
        },
        "purges_active": edge.bans().len(),
        "feed_position": m.feed_position.get(),
    })
}
