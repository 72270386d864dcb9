//! The plugin host's Prometheus metrics, registered in the edge's registry.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// `tessera_edge_plugin_calls_total{hook,plugin,result}`: result is `ok` or the failure
    /// (`deadline`, `memory`, `trap`, `invalid`, `instantiate`).
    pub calls: IntCounterVec,
    /// `tessera_edge_plugin_call_seconds{hook}`: time of a hook call, instance checkout
    /// included.
    pub call_seconds: HistogramVec,
    /// `tessera_edge_plugin_deploys_total{hook,result}`: `deployed`, `refused`,
    /// `rolled-back`, `removed`.
    pub deploys: IntCounterVec,
    /// `tessera_edge_plugin_version{hook}`: the deploy number bound to the hook, 0 for none.
    pub version: IntGaugeVec,
    /// `tessera_edge_plugin_reused_total{hook,plugin}`: decisions reused without a call
    /// ([`crate::memo`]).
    pub reused: IntCounterVec,
}

impl Metrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Metrics> {
        let calls = IntCounterVec::new(
            Opts::new(
                "tessera_edge_plugin_calls_total",
                "Plugin hook calls, by hook, plugin and result (ok or the failure)",
            ),
            &["hook", "plugin", "result"],
        )?;
        let call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "tessera_edge_plugin_call_seconds",
                "Time of one plugin hook call",
            )
            .buckets(vec![
                1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2,
            ]),
            &["hook"],
        )?;
        let deploys = IntCounterVec::new(
            Opts::new(
                "tessera_edge_plugin_deploys_total",
                "Plugin deploys, rollbacks and removals, by hook and result",
            ),
            &["hook", "result"],
        )?;
        let version = IntGaugeVec::new(
            Opts::new(
                "tessera_edge_plugin_version",
                "Deploy number of the plugin bound to each hook (0: none)",
            ),
            &["hook"],
        )?;
        let reused = IntCounterVec::new(
            Opts::new(
                "tessera_edge_plugin_reused_total",
                "Plugin decisions reused for a request on which the plugin would read the same \
                 answers, by hook and plugin",
            ),
            &["hook", "plugin"],
        )?;
        registry.register(Box::new(reused.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(call_seconds.clone()))?;
        registry.register(Box::new(deploys.clone()))?;
        registry.register(Box::new(version.clone()))?;
        Ok(Metrics {
            calls,
            call_seconds,
            deploys,
            version,
            reused,
        })
    }
}
