//! `/api/v1/cluster…`: the cluster's status for operators, and the calls nodes make to each
//! other. Writes need the node token like every write, and so do reads of file records and
//! fragments (they name deleted paths and every version's chunks); the calls answer from
//! this node's own store only.
//!
//! - `GET /api/v1/cluster`: nodes, liveness, replication, write rule, last repair report.
//! - `GET /api/v1/cluster/stats`: storage figures of the whole cluster (see
//!   [`Cluster::stats`]).
//! - `POST /api/v1/cluster/repair`: one repair pass now; its report.
//! - `POST /api/v1/cluster/scrub`: one scrub pass now, unthrottled: `{"checked", "repaired"}`.
//! - `GET /api/v1/cluster/files?prefix=P`, `GET|PUT /api/v1/cluster/files/{path}`: this
//!   node's file records; a `PUT` applies a record if newer and returns the current one.
//! - `GET|PUT /api/v1/cluster/fragments/{stamp}.{upload}/{path}[?merge=1]`: a fragment's
//!   chunk list; a `PUT` body is a stream of chunk frames (`blake3 [32] | length u32 BE |
//!   bytes`, each checked) committed as that fragment when the body ends; with `merge=1`
//!   the fragment keeps the chunks it already had.
//! - `POST /api/v1/cluster/fragments/drop`: `{"path", "stamp", "upload", "older"}`.
//! - `GET /api/v1/cluster/sync/digest?peer=ID`: the top level of this node's anti-entropy
//!   digests toward node `ID`, binary; `POST` with `{"groups": [...]}`: the bucket digests
//!   of those groups; `POST /api/v1/cluster/sync/items?peer=ID` with `{"buckets": [...]}`:
//!   its items of those buckets, as listed toward `ID` (see [`crate::digest`]).
//! - `POST /api/v1/cluster/repair[?full=1]`: see above; `full=1` makes the pass full.
//! - `GET /api/v1/cluster/members`: this node's membership (`{"me", "membership": {"epoch",
//!   "nodes", "previous"}, "moved", "settled"}`), what the nodes' peer checks read.
//!   `POST` with `{"add": {"id", "url", "weight"}}` or `{"remove": "ID"}`: a membership
//!   change, coordinated by this node (`409` while the last one still moves data);
//!   `PUT` with a membership: adopted if its epoch is newer (what the coordinator sends).

use std::sync::Arc;

use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tessera_origin_proto::ManifestChunk;

use super::{
    ApiError, App, Reply, authorize, blocking, form_pairs, json_reply, method_not_allowed,
};
use crate::cluster::{Cluster, FrameReader, fragment_writer};
use crate::store::cluster::FileRecord;

/// Largest file record or drop request accepted (a manifest of a very large file).
const MAX_RECORD_BYTES: usize = 256 << 20;

fn cluster_of(app: &App) -> Result<&Arc<Cluster>, ApiError> {
    app.cluster.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this origin node is standalone, not part of a cluster",
        )
    })
}

fn binary(bytes: Vec<u8>) -> http::Response<super::Body> {
    http::Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/octet-stream")
        .body(super::full(bytes))
        .expect("a valid response")
}

/// The `peer` query parameter: the node asking for its digests or items.
fn peer_of(req: &http::request::Parts) -> Result<String, ApiError> {
    form_pairs(req.uri.query().unwrap_or(""))
        .find(|(k, _)| k == "peer")
        .map(|(_, v)| v)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "\"peer\" is missing"))
}

fn path_of(raw: &str) -> Result<String, ApiError> {
    super::publish_path(raw)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    body: &mut Option<Incoming>,
) -> Result<T, ApiError> {
    let Some(b) = body.take() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a JSON body is required",
        ));
    };
    let bytes = http_body_util::Limited::new(b, MAX_RECORD_BYTES)
        .collect()
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("reading the body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid: {e}"),
        )
    })
}

pub(super) async fn route(
    app: &Arc<App>,
    req: &http::request::Parts,
    body: &mut Option<Incoming>,
) -> Reply {
    let cluster = cluster_of(app)?.clone();
    let path = req.uri.path();
    let method = &req.method;
    let rest = path.strip_prefix("/api/v1/cluster").unwrap_or("");
    let node_call =
        rest.starts_with("/files") || rest.starts_with("/fragments") || rest.starts_with("/sync");
    if node_call || (*method != Method::GET && *method != Method::HEAD) {
        authorize(app, &req.headers)?;
    }
    let trusted_read =
        *method == Method::GET && rest.starts_with("/files") || rest.starts_with("/sync");
    if trusted_read && cluster.resyncing() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node is resynchronising after being away longer than tombstones are kept; its records are not answered until it is done",
        )
        .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("5")));
    }
    match (method.clone(), rest) {
        (Method::GET, "" | "/") => Ok(json_reply(StatusCode::OK, &cluster.status())),
        (Method::GET, "/stats") => Ok(json_reply(StatusCode::OK, &cluster.stats().await?)),
        (Method::POST, "/repair") => {
            let full =
                form_pairs(req.uri.query().unwrap_or("")).any(|(k, v)| k == "full" && v == "1");
            let rep = cluster.repair_pass(full).await?;
            Ok(json_reply(StatusCode::OK, &rep))
        }
        (Method::GET, "/members") => Ok(json_reply(StatusCode::OK, &cluster.members_doc())),
        (Method::POST, "/members") => {
            let change: crate::cluster::MemberChange = read_json(body).await?;
            Ok(json_reply(
                StatusCode::OK,
                &cluster.change_members(change).await?,
            ))
        }
        (Method::PUT, "/members") => {
            let m: crate::cluster::Membership = read_json(body).await?;
            cluster.adopt(m).await?;
            Ok(json_reply(StatusCode::OK, &cluster.members_doc()))
        }
        (Method::GET, "/sync/digest") => Ok(binary(cluster.digest_for(&peer_of(req)?)?)),
        (Method::POST, "/sync/digest") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Groups {
                groups: Vec<u16>,
            }
            let g: Groups = read_json(body).await?;
            Ok(binary(
                cluster.bucket_digests_for(&peer_of(req)?, &g.groups)?,
            ))
        }
        (Method::POST, "/sync/items") => {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Buckets {
                buckets: Vec<u16>,
            }
            let b: Buckets = read_json(body).await?;
            if b.buckets.len() > crate::digest::BUCKETS {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "more buckets than a digest has",
                ));
            }
            let items = cluster.items_for(&peer_of(req)?, b.buckets).await?;
            Ok(json_reply(StatusCode::OK, &items))
        }
        (Method::POST, "/scrub") => {
            let (checked, repaired) = cluster.scrub(u64::MAX).await?;
            Ok(json_reply(
                StatusCode::OK,
                &serde_json::json!({"checked": checked, "repaired": repaired}),
            ))
        }
        (Method::GET, "/files" | "/files/") => {
            let prefix = form_pairs(req.uri.query().unwrap_or(""))
                .find(|(k, _)| k == "prefix")
                .map(|(_, v)| v)
                .unwrap_or_default();
            let store = app.store.clone();
            let recs = blocking(move || store.files(&prefix)).await??;
            Ok(json_reply(StatusCode::OK, &recs))
        }
        (Method::POST, "/fragments/drop") => {
            let v: serde_json::Value = read_json(body).await?;
            let n = cluster.apply_drop(&v).await?;
            Ok(json_reply(
                StatusCode::OK,
                &serde_json::json!({"dropped": n}),
            ))
        }
        (m, r) if r.starts_with("/files/") => {
            let p = path_of(&r["/files/".len()..])?;
            match m {
                Method::GET => {
                    let store = app.store.clone();
                    let q = p.clone();
                    match blocking(move || store.file(&q)).await?? {
                        Some(rec) => Ok(json_reply(StatusCode::OK, &rec)),
                        None => Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("this node holds no record of {p:?}"),
                        )),
                    }
                }
                Method::PUT => {
                    let rec: FileRecord = read_json(body).await?;
                    if rec.path != p {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            format!("the record is for {:?}, not {p:?}", rec.path),
                        ));
                    }
                    if let Some(m) = &rec.manifest {
                        m.check().map_err(|e| {
                            ApiError::new(StatusCode::BAD_REQUEST, format!("bad manifest: {e}"))
                        })?;
                    }
                    let store = app.store.clone();
                    let cur = blocking(move || store.put_file(&rec)).await??;
                    Ok(json_reply(StatusCode::OK, &cur))
                }
                _ => Err(method_not_allowed("GET, PUT")),
            }
        }
        (m, r) if r.starts_with("/fragments/") => {
            let r = &r["/fragments/".len()..];
            let (version, raw) = r.split_once('/').ok_or_else(bad_fragment)?;
            let (stamp, upload) = version.split_once('.').ok_or_else(bad_fragment)?;
            let stamp: u64 = stamp.parse().map_err(|_| bad_fragment())?;
            if upload.is_empty() || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad_fragment());
            }
            let p = path_of(raw)?;
            let upload = upload.to_string();
            match m {
                Method::GET => {
                    let store = app.store.clone();
                    let (q, u) = (p.clone(), upload.clone());
                    match blocking(move || store.fragment(&q, stamp, &u)).await?? {
                        Some(f) => {
                            let mut offset = 0;
                            let list: Vec<ManifestChunk> = f
                                .chunks
                                .iter()
                                .map(|&(hash, size)| {
                                    let c = ManifestChunk { hash, offset, size };
                                    offset += u64::from(size);
                                    c
                                })
                                .collect();
                            Ok(json_reply(StatusCode::OK, &list))
                        }
                        None => Err(ApiError::new(
                            StatusCode::NOT_FOUND,
                            format!("this node holds no fragment {stamp}.{upload} of {p:?}"),
                        )),
                    }
                }
                Method::PUT => {
                    let merge = form_pairs(req.uri.query().unwrap_or(""))
                        .any(|(k, v)| k == "merge" && v == "1");
                    put_fragment(app, &p, stamp, &upload, merge, body).await
                }
                _ => Err(method_not_allowed("GET, PUT")),
            }
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {path}"),
        )),
    }
}

fn bad_fragment() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "expected /api/v1/cluster/fragments/{stamp}.{upload-hex}/{path}",
    )
}

/// Receives a fragment stream and commits it as the fragment of `(stamp, upload)`.
async fn put_fragment(
    app: &Arc<App>,
    path: &str,
    stamp: u64,
    upload: &str,
    merge: bool,
    body: &mut Option<Incoming>,
) -> Reply {
    let Some(mut body) = body.take() else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "a body is required"));
    };
    let (tx, ingest) = fragment_writer(app.store.clone(), path, stamp, upload, merge);
    let mut frames = FrameReader::default();
    let mut refused = None;
    'read: while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => {
                refused = Some(format!("the body ended early: {e}"));
                break;
            }
        };
        match frames.push(&data) {
            Ok(pieces) => {
                for p in pieces {
                    if tx.send(Some(p)).await.is_err() {
                        break 'read;
                    }
                }
            }
            Err(why) => {
                refused = Some(why);
                break;
            }
        }
    }
    if refused.is_none() && !frames.is_clean() {
        refused = Some("the body ended inside a chunk frame".into());
    }
    if refused.is_none() {
        let _ = tx.send(None).await;
    }
    drop(tx);
    let outcome = ingest.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("ingest failed: {e}"),
        )
    })?;
    if let Some(why) = refused {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, why));
    }
    match outcome? {
        Some(reply) => Ok(json_reply(StatusCode::OK, &reply)),
        None => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the fragment was abandoned",
        )),
    }
}
