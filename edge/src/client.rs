//! A small HTTP client for operators, tests and benchmarks: HTTP/1.1 and HTTP/2 (over TLS by
//! ALPN, or cleartext with prior knowledge) with hyper, HTTP/3 with quinn + h3. One
//! [`Connection`] carries requests one after another (HTTP/1.1) or at once (HTTP/2 and
//! HTTP/3, whose connections are cheap to clone).
//!
//! Certificates are checked against the system's roots (`/etc/ssl/certs`) and any extra
//! certificate given, unless `insecure` is set (for development certificates).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::basics::body::{BoxError, EdgeBody, data_frame};
use crate::basics::quic::{QuicSettings, endpoint};

/// Which protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 (`h2` by ALPN over TLS, prior knowledge over cleartext).
    Http2,
    /// HTTPS: whatever the server picks by ALPN (`h2`, else `http/1.1`); cleartext: HTTP/1.1.
    Auto,
    /// HTTP/3 over QUIC (https only).
    Http3,
}

/// Errors of the client, each naming what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad URL {0:?}: expected http://HOST[:PORT]/PATH or https://…")]
    Url(String),
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("HTTP/3 needs an https:// URL")]
    Http3NeedsTls,
    #[error("cannot read the certificate {0}: {1}")]
    Certificate(String, String),
    #[error("request failed: {0}")]
    Request(String),
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub mode: Mode,
    /// Accept any certificate (development certificates). Signatures are still checked.
    pub insecure: bool,
    /// Extra certificates to trust (PEM), for example an edge's development certificate.
    pub trust: Vec<CertificateDer<'static>>,
    /// Connect here instead of the address the URL's host resolves to (the host still
    /// names the server for TLS and `Host`).
    pub connect_to: Option<SocketAddr>,
    /// QUIC windows (the client's receive windows bound a download's speed).
    pub quic: QuicSettings,
}

impl ClientOptions {
    pub fn new(mode: Mode) -> ClientOptions {
        ClientOptions {
            mode,
            insecure: false,
            trust: Vec::new(),
            connect_to: None,
            quic: QuicSettings {
                stream_window_bytes: 16 << 20,
                connection_window_bytes: 64 << 20,
                ..QuicSettings::default()
            },
        }
    }

    /// Trusts the certificates in the PEM file `path`.
    pub fn trust_file(mut self, path: &Path) -> Result<ClientOptions, ClientError> {
        let err = |e: String| ClientError::Certificate(path.display().to_string(), e);
        for c in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
            self.trust.push(c.map_err(|e| err(e.to_string()))?);
        }
        Ok(self)
    }
}

/// The body of a response, whatever the protocol.
pub type ClientBody = EdgeBody;

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
    H3 {
        send: h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>,
        // Kept so the endpoint (its socket and driver) lives as long as the connection.
        _endpoint: quinn::Endpoint,
        quic: quinn::Connection,
    },
}

/// One connection to a server.
pub struct Connection {
    sender: Sender,
    scheme: &'static str,
    authority: String,
    /// The protocol in use (`http/1.1`, `h2`, `h3`).
    pub protocol: &'static str,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("authority", &self.authority)
            .field("protocol", &self.protocol)
            .finish()
    }
}

impl Clone for Connection {
    /// HTTP/2 and HTTP/3 connections multiplex: a clone sends on the same connection.
    ///
    /// # Panics
    /// On an HTTP/1.1 connection, which carries one request at a time.
    fn clone(&self) -> Self {
        let sender = match &self.sender {
            Sender::H1(_) => panic!("an HTTP/1.1 connection cannot be shared"),
            Sender::H2(s) => Sender::H2(s.clone()),
            Sender::H3 {
                send,
                _endpoint,
                quic,
            } => Sender::H3 {
                send: send.clone(),
                _endpoint: _endpoint.clone(),
                quic: quic.clone(),
            },
        };
        Connection {
            sender,
            scheme: self.scheme,
            authority: self.authority.clone(),
            protocol: self.protocol,
        }
    }
}

/// Parses `url` into (https?, host, port, path and query).
fn split(url: &str) -> Result<(bool, String, u16, String), ClientError> {
    let bad = || ClientError::Url(url.to_string());
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().ok_or_else(bad)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    // A port that is not a number from 1 to 65535 is a mistake, not the default port
    // (`Uri::port` reads such a port as none).
    let authority = uri.authority().ok_or_else(bad)?.as_str();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    let port = match after_host.rsplit_once(':').map(|(_, p)| p) {
        None | Some("") => {
            if https {
                443
            } else {
                80
            }
        }
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(bad()),
        },
    };
    let pq = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    Ok((https, host, port, pq))
}

impl Connection {
    /// Connects to the server of `url` (its path is ignored).
    pub async fn connect(url: &str, opts: &ClientOptions) -> Result<Connection, ClientError> {
        let (https, host, port, _) = split(url)?;
        // Every address the name resolves to (`localhost` may give ::1 and 127.0.0.1), tried
        // in order until one answers.
        let addrs: Vec<SocketAddr> = match opts.connect_to {
            Some(a) => vec![a],
            None => tokio::net::lookup_host((host.as_str(), port))
                .await
                .map_err(|e| ClientError::Resolve(host.clone(), e.to_string()))?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(ClientError::Resolve(host.clone(), "no address".into()));
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let scheme = if https { "https" } else { "http" };
        let (sender, protocol) = match (opts.mode, https) {
            (Mode::Http3, false) => return Err(ClientError::Http3NeedsTls),
            (Mode::Http3, true) => {
                let mut last = None;
                let mut sender = None;
                for &addr in &addrs {
                    // No answer over UDP looks like silence: give each address 5 s.
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        h3_connect(addr, &host, opts),
                    )
                    .await
                    {
                        Ok(Ok(s)) => {
                            sender = Some(s);
                            break;
                        }
                        Ok(Err(e @ ClientError::Connect(..))) => last = Some(e),
                        // A certificate or protocol failure: the server answered; say why.
                        Ok(Err(e)) => return Err(e),
                        Err(_) => {
                            last = Some(ClientError::Connect(addr, "no QUIC answer in 5 s".into()))
                        }
                    }
                }
                match sender {
                    Some(s) => (s, "h3"),
                    None => return Err(last.expect("at least one address")),
                }
            }
            (mode, false) => {
                let tcp = tcp(&addrs).await?;
                if mode == Mode::Http2 {
                    (h2(tcp).await?, "h2")
                } else {
                    (h1(tcp).await?, "http/1.1")
                }
            }
            (mode, true) => {
                let alpn: Vec<&[u8]> = match mode {
                    Mode::Http1 => vec![b"http/1.1"],
                    Mode::Http2 => vec![b"h2"],
                    _ => vec![b"h2", b"http/1.1"],
                };
                let cfg = tls_config(opts, &alpn)?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|e| ClientError::Tls(host.clone(), e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect(name, tcp(&addrs).await?)
                    .await
                    .map_err(|e| ClientError::Tls(host.clone(), e.to_string()))?;
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    (h2(tls).await?, "h2")
                } else {
                    (h1(tls).await?, "http/1.1")
                }
            }
        };
        Ok(Connection {
            sender,
            scheme,
            authority,
            protocol,
        })
    }

    /// Sends `req` (its URI may be a bare path) and returns the response once its head has
    /// arrived; the body streams. Interim responses before it (HTTP/3) are in its
    /// extensions as [`Interim`].
    pub async fn send(&mut self, req: Request<Bytes>) -> Result<Response<ClientBody>, ClientError> {
        let (mut parts, body) = req.into_parts();
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let fail = |e: &dyn std::fmt::Display| ClientError::Request(e.to_string());
        match &mut self.sender {
            Sender::H1(s) => {
                parts.uri = pq.parse().map_err(|e| fail(&e))?;
                if !parts.headers.contains_key(http::header::HOST) {
                    parts.headers.insert(
                        http::header::HOST,
                        self.authority.parse().map_err(|e| fail(&e))?,
                    );
                }
                s.ready().await.map_err(|e| fail(&e))?;
                let r = s
                    .send_request(Request::from_parts(parts, Full::new(body)))
                    .await
                    .map_err(|e| fail(&e))?;
                Ok(r.map(|b| b.map_err(BoxError::from).boxed_unsync()))
            }
            Sender::H2(s) => {
                parts.uri = format!("{}://{}{pq}", self.scheme, self.authority)
                    .parse()
                    .map_err(|e| fail(&e))?;
                parts.version = http::Version::HTTP_2;
                s.ready().await.map_err(|e| fail(&e))?;
                let r = s
                    .send_request(Request::from_parts(parts, Full::new(body)))
                    .await
                    .map_err(|e| fail(&e))?;
                Ok(r.map(|b| b.map_err(BoxError::from).boxed_unsync()))
            }
            Sender::H3 { send, .. } => {
                // HTTP/3 has no `Host` field: one given names the request's authority.
                let authority = match parts.headers.remove(http::header::HOST) {
                    Some(h) => h.to_str().map_err(|e| fail(&e))?.to_string(),
                    None => self.authority.clone(),
                };
                parts.uri = format!("https://{authority}{pq}")
                    .parse()
                    .map_err(|e| fail(&e))?;
                parts.version = http::Version::HTTP_3;
                let mut stream = send
                    .send_request(Request::from_parts(parts, ()))
                    .await
                    .map_err(|e| fail(&e))?;
                // A server may answer before reading the whole request and stop our sending
                // (RFC 9114 §4.1): then the response still counts, so a failed send only
                // matters when no response follows.
                let sent = async {
                    if !body.is_empty() {
                        stream.send_data(body).await?;
                    }
                    stream.finish().await
                }
                .await;
                // Interim responses (`103 Early Hints`) come first; they are kept in the final
                // response's extensions.
                let mut interim = Interim::default();
                let mut head = loop {
                    let head = match stream.recv_response().await {
                        Ok(h) => h,
                        Err(e) => {
                            return Err(fail(&sent.err().map_or(e.to_string(), |s| s.to_string())));
                        }
                    };
                    if !head.status().is_informational() {
                        break head;
                    }
                    let (parts, ()) = head.into_parts();
                    interim.0.push((parts.status, parts.headers));
                };
                if !interim.0.is_empty() {
                    head.extensions_mut().insert(interim);
                }
                let (_, recv) = stream.split();
                Ok(head.map(|()| H3Body { recv, done: false }.boxed_unsync()))
            }
        }
    }

    /// Sends `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response<ClientBody>, ClientError> {
        let req = Request::get(path)
            .body(Bytes::new())
            .map_err(|e| ClientError::Request(e.to_string()))?;
        self.send(req).await
    }

    /// Closes an HTTP/3 connection (HTTP/1.1 and HTTP/2 close when dropped).
    pub async fn close(self) {
        if let Sender::H3 {
            _endpoint, quic, ..
        } = self.sender
        {
            // H3_NO_ERROR: a clean close (RFC 9114 §8.1).
            quic.close(0x100u32.into(), b"done");
            _endpoint.wait_idle().await;
        }
    }
}

/// A TCP connection to the first of `addrs` that accepts one.
async fn tcp(addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, ClientError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(ClientError::Connect(addr, e.to_string())),
        }
    }
    Err(last.expect("at least one address"))
}

async fn h1<T>(io: T) -> Result<Sender, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Request(e.to_string()))?;
    tokio::spawn(conn);
    Ok(Sender::H1(send))
}

async fn h2<T>(io: T) -> Result<Sender, ClientError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::Request(e.to_string()))?;
    tokio::spawn(conn);
    Ok(Sender::H2(send))
}

fn tls_config(opts: &ClientOptions, alpn: &[&[u8]]) -> Result<ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls("config".into(), e.to_string()))?;
    let mut cfg = if opts.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        let system = Path::new("/etc/ssl/certs/ca-certificates.crt");
        if let Ok(certs) = CertificateDer::pem_file_iter(system) {
            roots.add_parsable_certificates(certs.flatten());
        }
        for c in &opts.trust {
            roots
                .add(c.clone())
                .map_err(|e| ClientError::Certificate("trusted".into(), e.to_string()))?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// The interim (1xx) responses that came before a final one: status and fields, in order.
#[derive(Debug, Clone, Default)]
pub struct Interim(pub Vec<(http::StatusCode, http::HeaderMap)>);

async fn h3_connect(
    addr: SocketAddr,
    host: &str,
    opts: &ClientOptions,
) -> Result<Sender, ClientError> {
    let tls = tls_config(opts, &[b"h3"])?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::Tls(host.into(), e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(opts.quic.transport()));
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0".parse().unwrap()
    } else {
        "0.0.0.0:0".parse().unwrap()
    };
    let endpoint = std::net::UdpSocket::bind(bind)
        .and_then(|s| endpoint(s, None, &opts.quic))
        .map_err(|e| ClientError::Connect(addr, e.to_string()))?;
    let quic = endpoint
        .connect_with(cfg, addr, host)
        .map_err(|e| ClientError::Connect(addr, e.to_string()))?
        .await
        .map_err(|e| ClientError::Tls(host.into(), e.to_string()))?;
    let (mut driver, send) = h3::client::new(h3_quinn::Connection::new(quic.clone()))
        .await
        .map_err(|e| ClientError::Request(e.to_string()))?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok(Sender::H3 {
        send,
        _endpoint: endpoint,
        quic,
    })
}

/// A response body arriving on an HTTP/3 stream.
struct H3Body {
    recv: h3::client::RequestStream<h3_quinn::RecvStream, Bytes>,
    done: bool,
}

impl Body for H3Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let (frame, done) = data_frame(self.recv.poll_recv_data(cx));
        self.done = done;
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Accepts any certificate, for `--insecure`; handshake signatures are still verified, so
/// the peer must hold the key of the certificate it shows.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Splits `url` into its path and query (for requests on a connection made from it).
pub fn path_of(url: &str) -> Result<String, ClientError> {
    split(url).map(|(_, _, _, pq)| pq)
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn urls_with_a_bad_port_are_refused_not_sent_to_the_default_port() {
        for (url, port) in [
            ("http://127.0.0.1/", 80),
            ("https://localhost/x", 443),
            ("http://127.0.0.1:8080/", 8080),
            ("http://[::1]:9/", 9),
            ("https://[::1]/", 443),
            ("http://u:p@h:81/", 81),
        ] {
            assert_eq!(split(url).unwrap().2, port, "{url}");
        }
        for url in [
            "http://127.0.0.1:99999/",
            "http://127.0.0.1:65536/",
            "http://127.0.0.1:abc/",
            "http://127.0.0.1:0/",
            "ftp://x/",
        ] {
            assert!(split(url).is_err(), "{url}");
        }
    }
}
