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
//! memory = "256MiB"
//! disk = "1GiB"
//! origins = ["o1", "o2"]   # default: every origin
//! parent = "e2"            # optional: tiered caching, misses go to that edge
//! access_log = true        # optional: one log line per request
//! upstreams = { legacy = "http://127.0.0.1:9000" }  # optional: named upstreams for routing
//!
//! [[edge.plugins]]         # optional: WebAssembly plugins bound at start-up
//! hook = "authorize"       # route, authorize or eviction
//! plugin = "signed-url"    # a shipped plugin or a .wasm file
//! config = { key = "secret", prefixes = "/private/" }
//! ```
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOrigin {
    id: Spanned<String>,
    listen: Spanned<SocketAddr>,
    data: Option<PathBuf>,
    #[serde(default = "one")]
    weight: Spanned<u32>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    id: Spanned<String>,
    http: Option<Spanned<SocketAddr>>,
    https: Option<Spanned<SocketAddr>>,
    admin: Option<Spanned<SocketAddr>>,
    data: Option<PathBuf>,
    memory: Option<Spanned<String>>,
    disk: Option<Spanned<String>>,
    origins: Option<Vec<Spanned<String>>>,
    parent: Option<Spanned<String>>,
    #[serde(default)]
    access_log: bool,
    #[serde(default)]
    upstreams: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    plugins: Vec<tessera_edge::config::PluginBinding>,
}

/// One origin node of a topology.
#[derive(Debug, Clone)]
pub struct Origin {
    pub id: String,
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub weight: u32,
}

/// One edge node of a topology.
#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub data: PathBuf,
    pub memory: Option<u64>,
    pub disk: Option<u64>,
    /// Indexes into [`Topology::origins`].
    pub origins: Vec<usize>,
    /// Index into [`Topology::edges`].
    pub parent: Option<usize>,
    /// One log line per request.
    pub access_log: bool,
    /// Named upstreams a route plugin may send requests to.
    pub upstreams: std::collections::BTreeMap<String, String>,
    /// Plugins bound at start-up.
    pub plugins: Vec<tessera_edge::config::PluginBinding>,
}

/// A checked topology.
#[derive(Debug, Clone)]
pub struct Topology {
    pub replication: usize,
    pub vnodes: u32,
    pub token: Option<String>,
    pub admin_token: Option<String>,
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
    let raw: Raw = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        TopologyError {
            file: file.to_string(),
            line: line_of(span),
            field: "toml".into(),
            message: e.message().to_string(),
        }
    })?;
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
    for o in &raw.origin {
        check_id(&o.id, "origin")?;
        check_addr(&o.listen, "listen", o.id.get_ref())?;
        if *o.weight.get_ref() == 0 || *o.weight.get_ref() > 100 {
            return Err(err(
                o.weight.span(),
                "weight",
                "a weight is 1 to 100".into(),
            ));
        }
        origins.push(Origin {
            id: o.id.get_ref().clone(),
            listen: *o.listen.get_ref(),
            data: o
                .data
                .clone()
                .unwrap_or_else(|| raw.data.join(o.id.get_ref())),
            weight: *o.weight.get_ref(),
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
    for e in &raw.edge {
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
        let size = |s: &Option<Spanned<String>>,
                    field: &str|
         -> Result<Option<u64>, TopologyError> {
            s.as_ref()
                .map(|s| crate::size::parse_size(s.get_ref()).map_err(|m| err(s.span(), field, m)))
                .transpose()
        };
        let memory = size(&e.memory, "memory")?;
        let disk = size(&e.disk, "disk")?;
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
            http: e.http.as_ref().map(|a| *a.get_ref()),
            https: e.https.as_ref().map(|a| *a.get_ref()),
            admin: e.admin.as_ref().map(|a| *a.get_ref()),
            data: e.data.clone().unwrap_or_else(|| raw.data.join(id)),
            memory,
            disk,
            origins: list,
            parent,
            access_log: e.access_log,
            upstreams: e.upstreams.clone(),
            plugins: e.plugins.clone(),
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
        token: raw.token,
        admin_token: raw.admin_token,
        origins,
        edges,
    })
}

impl Topology {
    /// The configuration of origin `id`, or an error naming the ids there are.
    pub fn origin_config(&self, id: &str) -> anyhow::Result<(SocketAddr, OriginConfig)> {
        let o = self.origins.iter().find(|o| o.id == id).ok_or_else(|| {
            anyhow::anyhow!(
                "no origin {id:?} in the topology (origins: {})",
                self.origin_ids()
            )
        })?;
        let cfg = OriginConfig {
            data: o.data.clone(),
            token: self.token.clone(),
            cluster: Some(ClusterConfig {
                me: o.id.clone(),
                nodes: self
                    .origins
                    .iter()
                    .map(|n| NodeAddr {
                        id: n.id.clone(),
                        url: format!("http://{}", n.listen),
                        weight: n.weight,
                    })
                    .collect(),
                replication: self.replication,
                vnodes: self.vnodes,
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok((o.listen, cfg))
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
        let mut cfg = EdgeConfig {
            data: e.data.clone(),
            admin_token: self.admin_token.clone(),
            access_log: e.access_log,
            upstreams: e.upstreams.clone(),
            ..Default::default()
        };
        cfg.plugins.bind = e.plugins.clone();
        if let Some(m) = e.memory {
            cfg.memory_bytes = usize::try_from(m)?;
        }
        if let Some(d) = e.disk {
            cfg.disk_bytes = usize::try_from(d)?;
        }
        match e.parent {
            Some(p) => {
                let parent = &self.edges[p];
                cfg.backend =
                    Backend::Upstream(format!("http://{}", parent.http.expect("checked")));
            }
            None => {
                let chosen: Vec<&Origin> = e.origins.iter().map(|&i| &self.origins[i]).collect();
                cfg.backend = Backend::Origin(
                    chosen
                        .iter()
                        .map(|o| format!("http://{}", o.listen))
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
        let (_, o) = t.origin_config("o2").unwrap();
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
                "memory",
                "not a size",
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
