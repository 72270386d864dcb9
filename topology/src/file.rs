//! The topology file: every node of a Tessera network, in TOML.
//!
//! ```toml
//! replication = 2          # copies of each chunk and manifest (default 2, ≤ origins)
//! vnodes = 1024            # ring points per origin and unit of weight (default 1024)
//! data = "tessera-data"    # base folder; a node's data defaults to {data}/{id}
//! token = "publish-secret" # origins' write token (optional)
//! admin_token = "admin"    # edges' admin token (optional)
//!
//! [[origin]]
//! id = "o1"
//! listen = "127.0.0.1:7071"
//! weight = 1               # optional; data = "…" optional
//!
//! [[edge]]
//! id = "e1"
//! http = "127.0.0.1:8080"  # at least one of http / https
//! https = "127.0.0.1:8443" # HTTP/3 on the same UDP port
//! admin = "127.0.0.1:8081"
//! memory_bytes = "256MiB"  # `memory` is the same key
//! disk_bytes = "1GiB"      # `disk` is the same key
//! origins = ["o1", "o2"]   # default: every origin
//! parent = "e2"            # optional: tiered caching, misses go to that edge
//! access_log = true        # optional: one log line per request
//! upstreams = { legacy = "http://127.0.0.1:9000" }  # optional: named upstreams for routing
//!
//! [[edge.plugins.bind]]    # optional: WebAssembly plugins bound at start-up
//! hook = "authorize"       # route, authorize or eviction
//! plugin = "signed-url"    # a shipped plugin or a .wasm file
//! config = { key = "secret", prefixes = "/private/" }
//! ```
//!
//! One schema: an `[[origin]]` or `[[edge]]` entry takes every key of that node's own
//! configuration file (`topology/CONFIGURATION.md`), besides the topology's own (`id`,
//! `weight`; `origins`, `parent`). What the topology decides (an origin's `cluster`, an
//! edge's `backend` and `origin_ring`) cannot be set in an entry. `data` defaults to
//! `{data}/{id}`, `token` and `admin_token` to the topology's. An edge's `[[edge.plugins]]`
//! (a list of bindings) is short for `[[edge.plugins.bind]]`.
//!
//! [`parse`] checks everything it can before any node starts: unknown fields, duplicate
//! ids and addresses, references to nodes that do not exist, parent cycles, a replication
//! factor the origins cannot hold. Every error names the file, the line and the field.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tessera_edge::{Backend, EdgeConfig};
use tessera_origin::OriginConfig;
use tessera_origin::cluster::{ClusterConfig, NodeAddr};
use toml::Spanned;
use toml::de::DeValue;

/// The topology `tessera up` runs without an argument: three origins, replication 2, two
/// edges, all on loopback.
pub const LOCAL: &str = include_str!("../local.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    replication: Option<Spanned<usize>>,
    #[serde(default = "default_vnodes")]
    vnodes: Spanned<u32>,
    #[serde(default = "default_data")]
    data: PathBuf,
    token: Option<String>,
    admin_token: Option<String>,
    #[serde(default)]
    origin: Vec<RawOrigin>,
    #[serde(default)]
    edge: Vec<RawEdge>,
}

fn default_vnodes() -> Spanned<u32> {
    Spanned::new(0..0, ClusterConfig::default().vnodes)
}

fn default_data() -> PathBuf {
    PathBuf::from("tessera-data")
}

/// An `[[origin]]`'s keys the topology checks; the others are the node's (see [`node`]).
#[derive(Debug, Deserialize)]
struct RawOrigin {
    id: Spanned<String>,
    listen: Spanned<SocketAddr>,
    #[serde(default = "one")]
    weight: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

/// An `[[edge]]`'s keys the topology checks; the others are the node's (see [`node`]).
#[derive(Debug, Deserialize)]
struct RawEdge {
    id: Spanned<String>,
    http: Option<Spanned<SocketAddr>>,
    https: Option<Spanned<SocketAddr>>,
    admin: Option<Spanned<SocketAddr>>,
    origins: Option<Vec<Spanned<String>>>,
    parent: Option<Spanned<String>>,
}

/// One origin node of a topology.
#[derive(Debug, Clone)]
pub struct Origin {
    pub id: String,
    pub weight: u32,
    /// Its node configuration: the entry's keys, `data` and `token` defaulted from the
    /// topology (`cluster` is added by [`Topology::origin_config`]).
    pub config: OriginConfig,
}

/// One edge node of a topology.
#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    /// Indexes into [`Topology::origins`].
    pub origins: Vec<usize>,
    /// Index into [`Topology::edges`].
    pub parent: Option<usize>,
    /// Its node configuration: the entry's keys, `data` and `admin_token` defaulted from
    /// the topology (`backend` and `origin_ring` are added by [`Topology::edge_config`]).
    pub config: EdgeConfig,
}

/// A checked topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub replication: usize,
    pub vnodes: u32,
    /// The origins' write token (the first origin's, which `tessera up` publishes through).
    pub token: Option<String>,
    pub origins: Vec<Origin>,
    pub edges: Vec<Edge>,
}

/// A mistake in a topology file, with where it is.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct TopologyError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// Reads and checks the topology file at `path`.
pub fn load(path: &Path) -> anyhow::Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the topology {}: {e}", path.display()))?;
    Ok(parse(&text, &path.display().to_string())?)
}

/// Parses and checks a topology; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Topology, TopologyError> {
    let line_of =
        |span: std::ops::Range<usize>| text[..span.start.min(text.len())].matches('\n').count() + 1;
    let err = |span: std::ops::Range<usize>, field: &str, message: String| TopologyError {
        file: file.to_string(),
        line: line_of(span),
        field: field.to_string(),
        message,
    };
    let toml_err = |e: toml::de::Error| TopologyError {
        file: file.to_string(),
        line: line_of(e.span().unwrap_or(0..0)),
        field: "toml".into(),
        message: e.message().to_string(),
    };
    let raw: Raw = toml::from_str(text).map_err(toml_err)?;
    // The same text as spanned tables: each entry read again as its node's configuration.
    let doc = toml::de::DeTable::parse(text).map_err(toml_err)?;
    let entries = |kind: &str| -> Vec<Spanned<DeValue<'_>>> {
        match doc.get_ref().get(kind).map(|v| v.get_ref()) {
            Some(DeValue::Array(a)) => a.iter().cloned().collect(),
            _ => Vec::new(),
        }
    };
    if raw.origin.is_empty() {
        return Err(err(
            0..0,
            "origin",
            "the topology needs at least one [[origin]]".into(),
        ));
    }
    let mut ids: HashMap<String, &'static str> = HashMap::new();
    let mut addrs: HashMap<SocketAddr, String> = HashMap::new();
    let mut check_id = |id: &Spanned<String>, kind: &'static str| -> Result<(), TopologyError> {
        let v = id.get_ref();
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                id.span(),
                &format!("{kind}.id"),
                format!("{v:?} is not a node id: use letters, digits, '-' and '_'"),
            ));
        }
        if let Some(other) = ids.insert(v.clone(), kind) {
            return Err(err(
                id.span(),
                &format!("{kind}.id"),
                format!("{v:?} is already the id of an {other}"),
            ));
        }
        Ok(())
    };
    let mut check_addr =
        |a: &Spanned<SocketAddr>, field: &str, node: &str| -> Result<(), TopologyError> {
            if a.get_ref().port() != 0
                && let Some(other) = addrs.insert(*a.get_ref(), format!("{node}.{field}"))
            {
                return Err(err(
                    a.span(),
                    field,
                    format!("{} is already used by {other}", a.get_ref()),
                ));
            }
            Ok(())
        };
    let mut origins = Vec::new();
    for (o, entry) in raw.origin.iter().zip(entries("origin")) {
        check_id(&o.id, "origin")?;
        check_addr(&o.listen, "listen", o.id.get_ref())?;
        if *o.weight.get_ref() == 0 || *o.weight.get_ref() > 100 {
            return Err(err(
                o.weight.span(),
                "weight",
                "a weight is 1 to 100".into(),
            ));
        }
        let (mut config, given) = node::<OriginConfig>(
            entry,
            &["id", "weight"],
            &[
                ("cluster.me", "the entry's `id` is the node's"),
                ("cluster.nodes", "the topology's origins are the cluster"),
                ("cluster.replication", "set `replication` at the top"),
                ("cluster.vnodes", "set `vnodes` at the top"),
            ],
        )
        .map_err(|(span, field, message)| err(span, &field, message))?;
        if !given.contains("data") {
            config.data = raw.data.join(o.id.get_ref());
        }
        if !given.contains("token") {
            config.token = raw.token.clone();
        }
        origins.push(Origin {
            id: o.id.get_ref().clone(),
            weight: *o.weight.get_ref(),
            config,
        });
    }
    // Unset: two copies, or one for a single origin.
    let replication_span = raw.replication.as_ref().map_or(0..0, |r| r.span());
    let replication = raw
        .replication
        .as_ref()
        .map_or(2.min(origins.len()), |r| *r.get_ref());
    if replication == 0 || replication > origins.len() {
        return Err(err(
            replication_span,
            "replication",
            format!(
                "{replication} copies cannot be held by {} origin node(s): use 1 to {}",
                origins.len(),
                origins.len()
            ),
        ));
    }
    let vnodes = *raw.vnodes.get_ref();
    if vnodes == 0 || vnodes > 4096 {
        return Err(err(
            raw.vnodes.span(),
            "vnodes",
            "use 1 to 4096 points per node".into(),
        ));
    }
    let origin_index: HashMap<&str, usize> = origins
        .iter()
        .enumerate()
        .map(|(i, o)| (o.id.as_str(), i))
        .collect();
    let edge_index: HashMap<&str, usize> = raw
        .edge
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.get_ref().as_str(), i))
        .collect();
    let mut edges = Vec::new();
    for (e, entry) in raw.edge.iter().zip(entries("edge")) {
        check_id(&e.id, "edge")?;
        let id = e.id.get_ref();
        for (field, a) in [("http", &e.http), ("https", &e.https), ("admin", &e.admin)] {
            if let Some(a) = a {
                check_addr(a, field, id)?;
            }
        }
        if e.http.is_none() && e.https.is_none() {
            return Err(err(
                e.id.span(),
                "edge",
                format!("edge {id:?} has neither http nor https: clients could not reach it"),
            ));
        }
        let (mut config, given) = node::<EdgeConfig>(
            entry,
            &["id", "origins", "parent"],
            &[
                ("backend", "the topology sets it from `origins` or `parent`"),
                ("origin_ring", "the topology sets it from its origins"),
            ],
        )
        .map_err(|(span, field, message)| err(span, &field, message))?;
        if !given.contains("data") {
            config.data = raw.data.join(id);
        }
        if !given.contains("admin_token") {
            config.admin_token = raw.admin_token.clone();
        }
        let list = match &e.origins {
            None => (0..origins.len()).collect(),
            Some(names) => {
                let mut v = Vec::new();
                for n in names {
                    let i = origin_index.get(n.get_ref().as_str()).ok_or_else(|| {
                        err(
                            n.span(),
                            "origins",
                            format!(
                                "edge {id:?} names origin {:?}, which the topology does not list",
                                n.get_ref()
                            ),
                        )
                    })?;
                    v.push(*i);
                }
                if v.is_empty() {
                    return Err(err(
                        e.id.span(),
                        "origins",
                        format!("edge {id:?} has an empty origins list"),
                    ));
                }
                v
            }
        };
        let parent = match &e.parent {
            None => None,
            Some(p) => {
                let i = *edge_index.get(p.get_ref().as_str()).ok_or_else(|| {
                    err(
                        p.span(),
                        "parent",
                        format!(
                            "edge {id:?} names parent {:?}, which is not an edge here",
                            p.get_ref()
                        ),
                    )
                })?;
                if raw.edge[i].http.is_none() {
                    return Err(err(
                        p.span(),
                        "parent",
                        format!(
                            "parent edge {:?} needs an http listener for its children",
                            p.get_ref()
                        ),
                    ));
                }
                Some(i)
            }
        };
        edges.push(Edge {
            id: id.clone(),
            origins: list,
            parent,
            config,
        });
    }
    // Parents must not form a cycle (e1 → e2 → e1 would bounce a miss forever).
    for (start, e) in raw.edge.iter().enumerate() {
        let mut seen = HashSet::from([start]);
        let mut at = edges[start].parent;
        while let Some(p) = at {
            if !seen.insert(p) {
                return Err(err(
                    e.parent.as_ref().map(|p| p.span()).unwrap_or(0..0),
                    "parent",
                    format!(
                        "edge {:?} is its own ancestor through parent links",
                        e.id.get_ref()
                    ),
                ));
            }
            at = edges[p].parent;
        }
    }
    Ok(Topology {
        replication,
        vnodes,
        token: origins[0].config.token.clone(),
        origins,
        edges,
    })
}

/// Reads a topology entry as its node's configuration file: the entry without the
/// topology's own keys `own`, refusing the keys `decided` (with why the topology decides
/// them). Returns the configuration and the keys the entry gave; an error is the span, the
/// field and the message.
fn node<T: serde::de::DeserializeOwned>(
    entry: Spanned<DeValue<'_>>,
    own: &[&str],
    decided: &[(&str, &str)],
) -> Result<(T, HashSet<String>), (std::ops::Range<usize>, String, String)> {
    let span = entry.span();
    let DeValue::Table(mut table) = entry.into_inner() else {
        return Err((span, "toml".into(), "a node entry is a table".into()));
    };
    for key in own {
        table.remove(*key);
    }
    for (key, why) in decided {
        // A dotted key is one inside a table (`cluster.me`).
        let (outer, inner) = key.split_once('.').unwrap_or((key, ""));
        let found = match (table.get_key_value(outer), inner) {
            (Some((k, _)), "") => Some(k.span()),
            (Some((_, v)), inner) => match v.get_ref() {
                DeValue::Table(t) => t.get_key_value(inner).map(|(k, _)| k.span()),
                _ => None,
            },
            (None, _) => None,
        };
        if let Some(at) = found {
            return Err((
                at,
                key.to_string(),
                format!("cannot be set in a topology entry: {why}"),
            ));
        }
    }
    // `[[edge.plugins]]`, a list of bindings, is short for `[[edge.plugins.bind]]`.
    if let Some(plugins) = table.get_mut("plugins")
        && let DeValue::Array(_) = plugins.get_ref()
    {
        let key_span = plugins.span();
        let list = std::mem::replace(plugins.get_mut(), DeValue::Boolean(false));
        let mut inner = toml::de::DeTable::new();
        inner.insert(
            Spanned::new(key_span.clone(), "bind".into()),
            Spanned::new(key_span.clone(), list),
        );
        *plugins.get_mut() = DeValue::Table(inner);
    }
    let given = table.keys().map(|k| k.get_ref().to_string()).collect();
    let config = T::deserialize(toml::de::Deserializer::from(Spanned::new(
        span.clone(),
        table,
    )))
    .map_err(|e| {
        (
            e.span().unwrap_or(span),
            "toml".to_string(),
            e.message().to_string(),
        )
    })?;
    Ok((config, given))
}

impl Topology {
    /// The configuration of origin `id` (its `listen` is where it serves), or an error
    /// naming the ids there are.
    pub fn origin_config(&self, id: &str) -> anyhow::Result<OriginConfig> {
        let o = self.origins.iter().find(|o| o.id == id).ok_or_else(|| {
            anyhow::anyhow!(
                "no origin {id:?} in the topology (origins: {})",
                self.origin_ids()
            )
        })?;
        // The entry's own cluster settings (repair, scrub, timeouts) with the topology's
        // membership.
        let settings = o.config.cluster.clone().unwrap_or_default();
        Ok(OriginConfig {
            cluster: Some(ClusterConfig {
                me: o.id.clone(),
                nodes: self
                    .origins
                    .iter()
                    .map(|n| NodeAddr {
                        id: n.id.clone(),
                        url: format!("http://{}", n.config.listen),
                        weight: n.weight,
                    })
                    .collect(),
                replication: self.replication,
                vnodes: self.vnodes,
                ..settings
            }),
            ..o.config.clone()
        })
    }

    fn origin_ids(&self) -> String {
        self.origins
            .iter()
            .map(|o| o.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The configuration of edge `id`.
    pub fn edge_config(&self, id: &str) -> anyhow::Result<(Edge, EdgeConfig)> {
        let e = self.edges.iter().find(|e| e.id == id).ok_or_else(|| {
            let ids: Vec<_> = self.edges.iter().map(|e| e.id.as_str()).collect();
            anyhow::anyhow!("no edge {id:?} in the topology (edges: {})", ids.join(", "))
        })?;
        let mut cfg = e.config.clone();
        match e.parent {
            Some(p) => {
                let parent = &self.edges[p];
                cfg.backend =
                    Backend::Upstream(format!("http://{}", parent.config.http.expect("checked")));
            }
            None => {
                let chosen: Vec<&Origin> = e.origins.iter().map(|&i| &self.origins[i]).collect();
                cfg.backend = Backend::Origin(
                    chosen
                        .iter()
                        .map(|o| format!("http://{}", o.config.listen))
                        .collect(),
                );
                // The edge computes owners only when it knows the whole ring.
                if chosen.len() == self.origins.len() {
                    cfg.origin_ring = Some(tessera_edge::config::OriginRing {
                        nodes: chosen
                            .iter()
                            .map(|o| tessera_origin_proto::ring::RingNode {
                                id: o.id.clone(),
                                weight: o.weight,
                            })
                            .collect(),
                        replication: self.replication,
                        vnodes: self.vnodes,
                    });
                }
            }
        }
        Ok((e.clone(), cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_topology_is_valid() {
        let t = parse(LOCAL, "local.toml").unwrap();
        assert_eq!(t.origins.len(), 3);
        assert_eq!(t.replication, 2);
        assert_eq!(t.edges.len(), 2);
        let o = t.origin_config("o2").unwrap();
        assert_eq!(o.cluster.unwrap().nodes.len(), 3);
        let (_, e) = t.edge_config("e1").unwrap();
        assert_eq!(e.origin_ring.unwrap().nodes.len(), 3);
    }

    #[test]
    fn a_child_edge_sends_its_misses_to_its_parent_and_a_partial_origin_list_has_no_ring() {
        let t = parse(
            "[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7071\"\n\
             [[origin]]\nid = \"o2\"\nlisten = \"127.0.0.1:7072\"\n\
             [[edge]]\nid = \"top\"\nhttp = \"127.0.0.1:8080\"\norigins = [\"o2\"]\n\
             [[edge]]\nid = \"leaf\"\nhttp = \"127.0.0.1:8090\"\nparent = \"top\"\naccess_log = true\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(t.replication, 2);
        let (_, leaf) = t.edge_config("leaf").unwrap();
        assert_eq!(
            leaf.backend,
            Backend::Upstream("http://127.0.0.1:8080".into())
        );
        assert!(leaf.access_log);
        let (_, top) = t.edge_config("top").unwrap();
        assert_eq!(
            top.backend,
            Backend::Origin(vec!["http://127.0.0.1:7072".into()])
        );
        assert!(top.origin_ring.is_none());
        assert!(t.edge_config("nope").is_err());
        assert!(
            t.origin_config("o3")
                .unwrap_err()
                .to_string()
                .contains("o1, o2")
        );
    }

    #[test]
    fn an_entry_takes_every_key_of_its_node_file_and_the_topology_fills_the_rest() {
        let t = parse(
            r#"
            data = "base"
            token = "shared"
            admin_token = "admin"

            [[origin]]
            id = "o1"
            listen = "127.0.0.1:7071"
            max_body_bytes = "1g"
            file_cache_control = "public, max-age=5"

            [[origin]]
            id = "o2"
            listen = "127.0.0.1:7072"
            data = "elsewhere"
            token = "own"
            store = { pack_target_bytes = "8MiB" }
            cluster = { repair_interval_secs = 600 }

            [[edge]]
            id = "e1"
            http = "127.0.0.1:8080"
            memory_bytes = "64MiB"
            disk = "0"
            policy = "w-tiny-lfu"
            admin_token = "mine"
            timeouts = { connect_ms = 5 }

            [[edge.plugins]]
            hook = "authorize"
            plugin = "signed-url"

            [[edge]]
            id = "e2"
            https = "127.0.0.1:8443"
            http3 = false
            tls_cert = "c.pem"
            tls_key = "k.pem"

            [[edge.plugins.bind]]
            hook = "route"
            plugin = "router"
            "#,
            "t.toml",
        )
        .unwrap();
        let o1 = t.origin_config("o1").unwrap();
        assert_eq!(o1.listen, "127.0.0.1:7071".parse().unwrap());
        assert_eq!(o1.max_body_bytes, 1 << 30);
        assert_eq!(o1.file_cache_control, "public, max-age=5");
        assert_eq!(o1.data, PathBuf::from("base/o1"));
        assert_eq!(o1.token.as_deref(), Some("shared"));
        assert_eq!(o1.cluster.unwrap().nodes.len(), 2);
        let o2 = t.origin_config("o2").unwrap();
        assert_eq!(o2.data, PathBuf::from("elsewhere"));
        assert_eq!(o2.token.as_deref(), Some("own"));
        assert_eq!(o2.store.pack_target_bytes, 8 << 20);
        let c2 = o2.cluster.unwrap();
        assert_eq!((c2.me.as_str(), c2.repair_interval_secs), ("o2", 600));
        assert_eq!(t.token.as_deref(), Some("shared"));

        let (_, e1) = t.edge_config("e1").unwrap();
        assert_eq!(e1.http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(
            (e1.memory_bytes, e1.disk_bytes, e1.policy),
            (64 << 20, 0, tessera_edge::config::Policy::WTinyLfu)
        );
        assert_eq!(e1.admin_token.as_deref(), Some("mine"));
        assert_eq!(e1.timeouts.connect_ms, 5);
        assert_eq!(e1.plugins.bind.len(), 1);
        assert_eq!(e1.plugins.bind[0].plugin, "signed-url");
        assert_eq!(e1.data, PathBuf::from("base/e1"));
        let (_, e2) = t.edge_config("e2").unwrap();
        assert_eq!(e2.admin_token.as_deref(), Some("admin"));
        assert!(!e2.http3);
        assert_eq!(e2.tls_cert, Some(PathBuf::from("c.pem")));
        assert_eq!(e2.plugins.bind[0].plugin, "router");
        assert!(matches!(e2.backend, Backend::Origin(ref o) if o.len() == 2));
    }

    #[test]
    fn mistakes_name_the_line_and_the_field() {
        let base = "[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7071\"\n";
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[[origin]]\nid = \"o1\"\nlisten = \"nowhere\"\n",
                3,
                "toml",
                "invalid socket address",
            ),
            (
                "[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:1\"\ncolour = 1\n",
                4,
                "toml",
                "unknown field",
            ),
            (
                &format!("{base}[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7072\"\n"),
                5,
                "origin.id",
                "already the id",
            ),
            (
                &format!("{base}[[origin]]\nid = \"o2\"\nlisten = \"127.0.0.1:7071\"\n"),
                6,
                "listen",
                "already used",
            ),
            (
                &format!("replication = 3\n{base}"),
                1,
                "replication",
                "cannot be held",
            ),
            (
                &format!(
                    "{base}[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\norigins = [\"o9\"]\n"
                ),
                7,
                "origins",
                "o9",
            ),
            (
                &format!("{base}[[edge]]\nid = \"e1\"\n"),
                5,
                "edge",
                "neither http nor https",
            ),
            (
                &format!(
                    "{base}[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\nmemory = \"lots\"\n"
                ),
                7,
                "toml",
                "not a size",
            ),
            (
                &format!(
                    "{base}[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\nbackend = {{ upstream = \"http://x\" }}\n"
                ),
                7,
                "backend",
                "cannot be set in a topology entry",
            ),
            (
                "[[origin]]\nid = \"o1\"\nlisten = \"127.0.0.1:7071\"\n\ncluster = { vnodes = 8 }\n",
                5,
                "cluster.vnodes",
                "set `vnodes` at the top",
            ),
            (
                &format!(
                    "{base}[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\n[edge.timeouts]\nconect_ms = 5\n"
                ),
                8,
                "toml",
                "unknown field `conect_ms`",
            ),
            (
                &format!(
                    "{base}[[edge]]\nid = \"e1\"\nhttp = \"127.0.0.1:8080\"\nparent = \"e2\"\n[[edge]]\nid = \"e2\"\nhttp = \"127.0.0.1:8090\"\nparent = \"e1\"\n"
                ),
                7,
                "parent",
                "own ancestor",
            ),
            ("replication = 1\n", 1, "origin", "at least one"),
        ];
        for (text, line, field, words) in cases {
            let e = parse(text, "t.toml").unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (*line, *field), "{e}\n{text}");
            assert!(e.to_string().contains(words), "{e}");
            assert!(
                e.to_string().starts_with(&format!("t.toml:{line}: ")),
                "{e}"
            );
        }
    }
}
