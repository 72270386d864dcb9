//! The Tessera edge node: a caching reverse proxy with a memory tier and an SSD tier, in
//! front of Tessera origin nodes (content addressed: chunks cached by blake3) or of any HTTP
//! server (an RFC 9111 shared cache).
//!
//! This crate holds no command-line code: `tessera edge` (in `topology/`) builds an
//! [`EdgeConfig`] and calls [`run`].
//!
//! # Layout
//! Layers, bottom to top; each imports only from the layers below it (the test
//! `layers::imports_only_point_down` reads every `crate::` path and fails on one that points
//! up):
//! 0. [`basics`] — bodies, errors, clock, protocol names, QUIC settings, configuration, TLS,
//!    metrics.
//! 1. [`rules`] — the decisions free of I/O and clocks: freshness and directives, `Vary`,
//!    the representation plan (preconditions, ranges, brotli) for hits and fills alike, the
//!    `304` merge, the store plan of a fetched response, request paths.
//! 2. [`store`] — entries and their on-disk format, the foyer tiers, purges as bans, the
//!    eviction advice seam, and the one lookup.
//! 3. [`coalesce`] — one fetch per key: a leader's permit or a follower; dropping the permit
//!    ends the flight. Manifests, chunks and upstream fills use it.
//! 4. [`backends`] — [`backends::origin`] (clients, ring, manifests, chunks, the change feed)
//!    and [`backends::upstream`] (client, forwarded headers, the fetch loop). They never see
//!    the edge and never build responses.
//! 5. [`pipeline`] — the [`Edge`], its named phases, the one cache driver both backends
//!    share, outcomes as enums, errors mapped to statuses in one place, plugin hooks, the
//!    access log.
//! 6. [`listen`] — TCP/TLS, QUIC and the admin API; and [`client`], an HTTP/1.1, HTTP/2 and
//!    HTTP/3 client (`tessera get`, tests, benchmarks).

pub mod backends;
pub mod basics;
pub mod client;
pub mod coalesce;
pub mod listen;
pub mod pipeline;
pub mod rules;
pub mod store;

pub use basics::protocol::Protocol;
pub use basics::{config, tls};
pub use config::{Backend, EdgeConfig};
pub use listen::{Listeners, h3, run};
pub use pipeline::Edge;

#[cfg(test)]
mod layers {
    use std::path::{Path, PathBuf};

    /// The layers, bottom to top; modules on one line share a layer.
    const LAYERS: &[&[&str]] = &[
        &["basics"],
        &["rules"],
        &["store"],
        &["coalesce"],
        &["backends"],
        &["pipeline"],
        &["listen", "client"],
    ];

    fn layer_of(module: &str) -> Option<usize> {
        LAYERS.iter().position(|l| l.contains(&module))
    }

    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every `crate::X` in code (not comments) of a module of layer N names a module of
    /// layer N or below; a module's own layer may use itself freely, as may its children.
    #[test]
    fn imports_only_point_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let mut wrong = Vec::new();
        let mut checked = 0;
        for file in &all {
            let rel = file.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let top = top.trim_end_matches(".rs");
            if top == "lib" {
                continue;
            }
            let own = layer_of(top).unwrap_or_else(|| panic!("{} is in no layer", rel.display()));
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap();
                for (i, _) in code.match_indices("crate::") {
                    let used: String = code[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    checked += 1;
                    match layer_of(&used) {
                        Some(l) if l <= own => {}
                        _ => wrong.push(format!("{}:{}: {}", rel.display(), n + 1, line.trim())),
                    }
                }
            }
        }
        assert!(
            checked > 100,
            "only {checked} crate:: paths found: is the source there?"
        );
        assert!(
            wrong.is_empty(),
            "imports pointing up:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn an_upward_import_is_caught() {
        // The check itself: a line of `store` naming `pipeline` points up.
        assert!(layer_of("pipeline").unwrap() > layer_of("store").unwrap());
        assert_eq!(layer_of("nowhere"), None);
    }
}
