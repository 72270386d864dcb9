//! An HTTP client for the origin's publisher and edge APIs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::{Deserialize, Serialize};

use crate::{ChunkHash, Manifest};

/// The body type uploads are sent with.
pub type UploadBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Bytes that are percent-encoded in a path segment; `/` is kept as the separator.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|');

/// Percent-encodes a publish path for use in a URL.
pub fn encode_path(path: &str) -> String {
    utf8_percent_encode(path, PATH_SEGMENT).to_string()
}

/// The origin's reply to a publish (`201`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishReply {
    /// Where the file was published.
    pub path: String,
    /// File size in bytes.
    pub size: u64,
    /// blake3 of the whole file, hex.
    pub blake3: ChunkHash,
    /// Number of chunks the file was cut into.
    pub chunks: u64,
    /// How many of those the origin did not have before.
    pub new_chunks: u64,
    /// Bytes the origin's chunk store grew by (after compression).
    pub stored_bytes_added: u64,
}

/// The origin's storage figures, `GET /api/v1/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Published files.
    pub objects: u64,
    /// Sum of the published files' sizes.
    pub logical_bytes: u64,
    /// Sum of the sizes of the distinct chunks, before compression.
    pub unique_bytes: u64,
    /// Bytes the chunk store and the metadata occupy on disk (allocated blocks).
    pub stored_bytes: u64,
    /// `logical_bytes / unique_bytes`.
    pub dedup_ratio: f64,
    /// `unique_bytes / stored_bytes`.
    pub compression_ratio: f64,
    /// `logical_bytes / stored_bytes`.
    pub efficiency: f64,
}

/// Where a client call failed, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given is not usable.
    #[error("bad origin URL {url:?}: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The origin could not be reached or the connection broke (upstream; retryable).
    #[error("origin {url} unreachable: {source}")]
    Transport {
        /// The request URL.
        url: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The origin answered with an error status (upstream; retryable if 5xx).
    #[error("origin answered {status} for {url}: {message}")]
    Status {
        /// The request URL.
        url: String,
        /// The HTTP status.
        status: StatusCode,
        /// The `error` field of the JSON body, or the body itself.
        message: String,
    },
    /// The origin's reply could not be decoded (upstream; not retryable on this node).
    #[error("origin reply from {url} is malformed: {why}")]
    Malformed {
        /// The request URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// A chunk's bytes do not hash to its address (upstream corruption; try another replica).
    #[error("chunk {hash} from {url} failed its blake3 check")]
    Corrupt {
        /// The request URL.
        url: String,
        /// The address requested.
        hash: ChunkHash,
    },
}

impl ClientError {
    /// Whether the same request may succeed later or on another replica.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Corrupt { .. } => true,
            ClientError::Status { status, .. } => status.is_server_error(),
            ClientError::BadUrl { .. } | ClientError::Malformed { .. } => false,
        }
    }
}

/// The answer to [`OriginClient::manifest_with`].
#[derive(Debug)]
pub enum ManifestFetch {
    /// The current manifest, and the response headers it came with.
    Found {
        manifest: Manifest,
        headers: http::HeaderMap,
        /// The whole file, checked against the manifest's blake3 and size, when it was asked
        /// for ([`crate::inline`]) and the node sent it.
        inline: Option<Bytes>,
    },
    /// The ETag sent is still current; the headers refresh the stored copy's freshness.
    NotModified { headers: http::HeaderMap },
    /// Nothing is published at that path.
    Missing,
}

/// A client for one origin node. Cheap to clone; clones share connections.
#[derive(Clone, Debug)]
pub struct OriginClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, UploadBody>,
    /// Marks every request as a hop inside the cluster ([`HOP_HEADER`]).
    hop: bool,
    /// The node's hybrid logical clock, sent with every request and advanced by every
    /// answer's ([`CLOCK_HEADER`]).
    clock: Option<Arc<AtomicU64>>,
}

/// Header of requests between the nodes of an origin cluster, and of their answers: the
/// sender's hybrid logical clock (the newest version stamp it issued or saw, Unix ms). A
/// node that receives one never stamps a version at or below it afterwards, so versions
/// follow the order of the operations whatever the nodes' wall clocks say.
pub const CLOCK_HEADER: &str = "x-tessera-clock";

/// The clock a request or answer carries, if any and well formed.
pub fn clock_of(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(CLOCK_HEADER)?.to_str().ok()?.parse().ok()
}

/// Header of requests between the nodes of an origin cluster: the receiving node answers
/// from its own store and never forwards, so requests cannot loop.
pub const HOP_HEADER: &str = "x-tessera-hop";

impl OriginClient {
    /// A client for the origin at `base` (`http://host:port`), sending `token` on writes.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let uri: http::Uri =
            base.parse()
                .map_err(|e: http::uri::InvalidUri| ClientError::BadUrl {
                    url: base.clone(),
                    why: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ClientError::BadUrl {
                url: base,
                why: "expected http://HOST:PORT".into(),
            });
        }
        Ok(Self {
            base,
            token,
            http: Self::pool(Duration::from_secs(10)),
            hop: false,
            clock: None,
        })
    }

    /// A connection pool whose connection attempts give up after `connect_timeout`.
    fn pool(connect_timeout: Duration) -> Client<HttpConnector, UploadBody> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        Client::builder(TokioExecutor::new()).build(connector)
    }

    /// This client, giving up on a connection attempt after `timeout` (10 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.http = Self::pool(timeout);
        self
    }

    /// This client, marking its requests as hops between cluster nodes.
    pub fn hop(mut self) -> Self {
        self.hop = true;
        self
    }

    /// This client, marking its requests as hops between cluster nodes that carry `clock`
    /// ([`CLOCK_HEADER`]) and advance it to the clock of each answer.
    pub fn hop_with_clock(mut self, clock: Arc<AtomicU64>) -> Self {
        self.hop = true;
        self.clock = Some(clock);
        self
    }

    /// Sends any request to `path_and_query` (starting with `/`) and reads the whole
    /// answer, whatever its status; transport errors only are errors.
    pub async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: UploadBody,
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        let url = format!("{}{path_and_query}", self.base);
        self.send_raw(method, url, body, &[]).await
    }

    /// The base URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        url: String,
        body: UploadBody,
        extra: &[(header::HeaderName, String)],
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        let (parts, bytes) = self.send_raw(method, url.clone(), body, extra).await?;
        if !parts.status.is_success() {
            return Err(status_error(url, parts.status, &bytes));
        }
        Ok((parts, bytes))
    }

    /// Sends a request and reads the whole answer, whatever its status.
    async fn send_raw(
        &self,
        method: Method,
        url: String,
        body: UploadBody,
        extra: &[(header::HeaderName, String)],
    ) -> Result<(http::response::Parts, Bytes), ClientError> {
        let mut req = Request::builder().method(method.clone()).uri(&url);
        // Every call carries the token: a cluster node's reads of another's records need it.
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        for (k, v) in extra {
            req = req.header(k, v);
        }
        let (parts, body) = self.open(req, &url, body).await?.into_parts();
        let bytes = body
            .collect()
            .await
            .map_err(|e| ClientError::Transport {
                url: url.clone(),
                source: Box::new(e),
            })?
            .to_bytes();
        Ok((parts, bytes))
    }

    /// Sends `req` (to `url`) with `body` and the hop header when this client is a node's,
    /// and returns the answer's head and its body unread.
    async fn open(
        &self,
        mut req: http::request::Builder,
        url: &str,
        body: UploadBody,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        if self.hop {
            req = req.header(HOP_HEADER, "1");
        }
        if let Some(c) = &self.clock {
            req = req.header(CLOCK_HEADER, c.load(Ordering::SeqCst));
        }
        let req = req.body(body).map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            why: e.to_string(),
        })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Transport {
                url: url.to_string(),
                source: Box::new(e),
            })?;
        if let Some(c) = &self.clock
            && let Some(theirs) = clock_of(resp.headers())
        {
            c.fetch_max(theirs, Ordering::SeqCst);
        }
        Ok(resp)
    }

    fn json<T: serde::de::DeserializeOwned>(url: &str, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| ClientError::Malformed {
            url: url.to_string(),
            why: e.to_string(),
        })
    }

    /// Publishes `body` at `path` (`PUT /api/v1/files/{path}`).
    pub async fn put_file(
        &self,
        path: &str,
        body: UploadBody,
    ) -> Result<PublishReply, ClientError> {
        self.put(path, body, &[]).await
    }

    /// Publishes at `path` a body in the [`crate::upload`] format: the chunks the origin has
    /// named, the rest sent. A `409` means a named chunk is not (or no longer) there: send
    /// the bytes with [`OriginClient::put_file`].
    pub async fn put_pieces(
        &self,
        path: &str,
        body: UploadBody,
    ) -> Result<PublishReply, ClientError> {
        let content_type = (
            header::CONTENT_TYPE,
            crate::upload::CONTENT_TYPE.to_string(),
        );
        self.put(path, body, &[content_type]).await
    }

    async fn put(
        &self,
        path: &str,
        body: UploadBody,
        extra: &[(header::HeaderName, String)],
    ) -> Result<PublishReply, ClientError> {
        let url = format!("{}/api/v1/files/{}", self.base, encode_path(path));
        let (_, bytes) = self.send(Method::PUT, url.clone(), body, extra).await?;
        Self::json(&url, &bytes)
    }

    /// Which of `hashes` (at most [`crate::batch::MAX_BATCH_CHUNKS`]) the origin has
    /// (`POST /api/v1/chunks/known`), in order.
    pub async fn known_chunks(&self, hashes: &[ChunkHash]) -> Result<Vec<bool>, ClientError> {
        let url = format!("{}/api/v1/chunks/known", self.base);
        let body = full(crate::batch::encode_request(hashes));
        let (_, bytes) = self.send(Method::POST, url.clone(), body, &[]).await?;
        if bytes.len() != hashes.len() || bytes.iter().any(|&b| b > 1) {
            return Err(ClientError::Malformed {
                url,
                why: format!(
                    "{} answer bytes for {} addresses",
                    bytes.len(),
                    hashes.len()
                ),
            });
        }
        Ok(bytes.iter().map(|&b| b == 1).collect())
    }

    /// Publishes an in-memory body at `path`.
    pub async fn put_bytes(
        &self,
        path: &str,
        data: impl Into<Bytes>,
    ) -> Result<PublishReply, ClientError> {
        self.put_file(path, full(data.into())).await
    }

    /// The storage figures (`GET /api/v1/stats`).
    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let url = format!("{}/api/v1/stats", self.base);
        let (_, bytes) = self
            .send(Method::GET, url.clone(), full(Bytes::new()), &[])
            .await?;
        Self::json(&url, &bytes)
    }

    /// The manifest of the file at `path`, checked; `None` when nothing is published there.
    pub async fn manifest(&self, path: &str) -> Result<Option<Manifest>, ClientError> {
        let url = format!("{}/api/v1/manifests/{}", self.base, encode_path(path));
        match self
            .send(Method::GET, url.clone(), full(Bytes::new()), &[])
            .await
        {
            Ok((_, bytes)) => {
                Manifest::from_json(&bytes)
                    .map(Some)
                    .map_err(|e| ClientError::Malformed {
                        url,
                        why: e.to_string(),
                    })
            }
            Err(ClientError::Status {
                status: StatusCode::NOT_FOUND,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The manifest of `path` with the headers that govern caching it (`Cache-Control`,
    /// `ETag`, `Date`, …), revalidating `etag` when given, and with the file's bytes when it
    /// is at most `inline_max` bytes ([`crate::inline`]): the edge's manifest fetch.
    pub async fn manifest_with(
        &self,
        path: &str,
        etag: Option<&str>,
        inline_max: Option<u64>,
    ) -> Result<ManifestFetch, ClientError> {
        let url = format!("{}/api/v1/manifests/{}", self.base, encode_path(path));
        let mut extra: Vec<_> = etag
            .map(|e| (header::IF_NONE_MATCH, e.to_string()))
            .into_iter()
            .collect();
        if let Some(max) = inline_max {
            extra.push((
                http::HeaderName::from_static(crate::inline::INLINE_HEADER),
                max.to_string(),
            ));
        }
        let (parts, bytes) = self
            .send_raw(Method::GET, url.clone(), full(Bytes::new()), &extra)
            .await?;
        match parts.status {
            StatusCode::OK => {
                let framed = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .is_some_and(|v| v == crate::inline::CONTENT_TYPE);
                let (json, data) = if framed {
                    let (json, data) =
                        crate::inline::decode(&bytes).ok_or_else(|| ClientError::Malformed {
                            url: url.clone(),
                            why: "a manifest with inline bytes shorter than it says".into(),
                        })?;
                    (json, Some(data))
                } else {
                    (bytes, None)
                };
                let manifest = Manifest::from_json(&json).map_err(|e| ClientError::Malformed {
                    url,
                    why: e.to_string(),
                })?;
                // Bytes that are not the file's are dropped: its chunks are fetched instead.
                let inline = data.filter(|d| {
                    d.len() as u64 == manifest.size && ChunkHash::of(d) == manifest.blake3
                });
                Ok(ManifestFetch::Found {
                    manifest,
                    headers: parts.headers,
                    inline,
                })
            }
            StatusCode::NOT_MODIFIED => Ok(ManifestFetch::NotModified {
                headers: parts.headers,
            }),
            StatusCode::NOT_FOUND => Ok(ManifestFetch::Missing),
            status => Err(ClientError::Status {
                url,
                status,
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// The changes after `since`, waiting up to `wait_secs` for one (long poll).
    pub async fn changes(
        &self,
        since: u64,
        wait_secs: u64,
    ) -> Result<crate::changes::ChangesReply, ClientError> {
        // `u64::MAX` asks for the head: said so, not as a 20-digit number.
        let since = match since {
            u64::MAX => "head".to_string(),
            n => n.to_string(),
        };
        let url = format!(
            "{}/api/v1/changes?since={since}&wait={wait_secs}",
            self.base
        );
        let (_, bytes) = self
            .send(Method::GET, url.clone(), full(Bytes::new()), &[])
            .await?;
        Self::json(&url, &bytes)
    }

    /// The bytes of chunk `hash`, fetched brotli-encoded where the origin stores it so, decoded,
    /// and checked against `hash`: corrupt bytes are an error, never a result.
    pub async fn chunk(&self, hash: ChunkHash) -> Result<Bytes, ClientError> {
        let url = format!("{}/api/v1/chunks/{hash}", self.base);
        let (parts, bytes) = self
            .send(
                Method::GET,
                url.clone(),
                full(Bytes::new()),
                &[(header::ACCEPT_ENCODING, "br".into())],
            )
            .await?;
        let data = match parts
            .headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.as_bytes())
        {
            None | Some(b"identity") => bytes,
            Some(b"br") => {
                let mut out = Vec::new();
                brotli::BrotliDecompress(&mut &bytes[..], &mut out).map_err(|e| {
                    ClientError::Malformed {
                        url: url.clone(),
                        why: format!("brotli: {e}"),
                    }
                })?;
                Bytes::from(out)
            }
            Some(other) => {
                return Err(ClientError::Malformed {
                    url,
                    why: format!(
                        "unknown Content-Encoding {:?}",
                        String::from_utf8_lossy(other)
                    ),
                });
            }
        };
        if ChunkHash::of(&data) != hash {
            return Err(ClientError::Corrupt { url, hash });
        }
        Ok(data)
    }
}

/// One chunk of a [`ChunkBatch`], in the order requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem {
    /// The chunk's bytes, decoded and checked against its address.
    Chunk(ChunkHash, Bytes),
    /// The node has no copy it could verify: ask a replica.
    Unavailable(ChunkHash),
    /// The bytes received do not hash to the address (or do not decode): ask a replica.
    Corrupt(ChunkHash),
}

/// The streamed answer to [`OriginClient::chunk_batch`]: one [`BatchItem`] per requested
/// address, in order, each available as soon as its frame arrived.
#[derive(Debug)]
pub struct ChunkBatch {
    url: String,
    body: hyper::body::Incoming,
    decoder: crate::batch::Decoder,
    ended: bool,
}

impl ChunkBatch {
    /// The next chunk; `None` once every requested chunk was given. An error ends the batch:
    /// [`ChunkBatch::received`] says how many items came before it.
    pub async fn next(&mut self) -> Option<Result<BatchItem, ClientError>> {
        use hyper::body::Body as _;
        loop {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => return Some(Ok(self.item(frame))),
                Ok(None) if self.ended => {
                    return self.decoder.finish().err().map(|e| Err(self.malformed(e)));
                }
                Ok(None) => {}
                Err(e) => return Some(Err(self.malformed(e))),
            }
            let frame =
                std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.body).poll_frame(cx)).await;
            match frame {
                None => self.ended = true,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        source: format!(
                            "chunk batch broken after {} chunks: {e}",
                            self.decoder.frames()
                        )
                        .into(),
                    }));
                }
            }
        }
    }

    /// Items given so far.
    pub fn received(&self) -> usize {
        self.decoder.frames()
    }

    fn malformed(&mut self, e: crate::batch::BatchError) -> ClientError {
        self.ended = true;
        ClientError::Malformed {
            url: self.url.clone(),
            why: e.to_string(),
        }
    }

    /// Decodes and checks one frame.
    fn item(&self, frame: crate::batch::Frame) -> BatchItem {
        use crate::batch::{Encoding, Frame};
        let (hash, encoding, payload) = match frame {
            Frame::Unavailable { hash } => return BatchItem::Unavailable(hash),
            Frame::Chunk {
                hash,
                encoding,
                payload,
            } => (hash, encoding, payload),
        };
        let data = match encoding {
            Encoding::Identity => payload,
            Encoding::Brotli => {
                // Bounded: a chunk larger than a frame may carry is corrupt anyway.
                let mut out = Vec::new();
                let mut reader = std::io::Read::take(
                    brotli::Decompressor::new(&payload[..], 4096),
                    crate::batch::MAX_PAYLOAD as u64 + 1,
                );
                if std::io::Read::read_to_end(&mut reader, &mut out).is_err() {
                    return BatchItem::Corrupt(hash);
                }
                Bytes::from(out)
            }
        };
        if ChunkHash::of(&data) != hash {
            return BatchItem::Corrupt(hash);
        }
        BatchItem::Chunk(hash, data)
    }
}

impl OriginClient {
    /// Asks this node for the chunks `hashes` in one request (`POST /api/v1/chunks`, the
    /// format in [`crate::batch`]); their bytes arrive as a stream. `brotli` lets the node
    /// send its stored brotli encoding (less to transfer, more to decode). At most
    /// [`crate::batch::MAX_BATCH_CHUNKS`] addresses. An answer other than `200` is
    /// [`ClientError::Status`] (`404` or `405`: the node predates batches).
    pub async fn chunk_batch(
        &self,
        hashes: &[ChunkHash],
        brotli: bool,
    ) -> Result<ChunkBatch, ClientError> {
        let url = format!("{}/api/v1/chunks", self.base);
        let mut req = Request::post(&url).header(header::CONTENT_TYPE, crate::batch::REQUEST_TYPE);
        if brotli {
            req = req.header(header::ACCEPT_ENCODING, "br");
        }
        let body = full(crate::batch::encode_request(hashes));
        let (parts, body) = self.open(req, &url, body).await?.into_parts();
        if parts.status != StatusCode::OK {
            let bytes = http_body_util::Limited::new(body, 64 << 10)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(url, parts.status, &bytes));
        }
        Ok(ChunkBatch {
            url,
            body,
            decoder: crate::batch::Decoder::new(hashes.to_vec()),
            ended: false,
        })
    }
}

/// An error status from the origin, with the `error` field of its JSON body (or the body
/// itself) as the message.
fn status_error(url: String, status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    ClientError::Status {
        url,
        status,
        message,
    }
}

/// A complete in-memory upload body.
pub fn full(data: Bytes) -> UploadBody {
    Full::new(data).map_err(|never| match never {}).boxed()
}
