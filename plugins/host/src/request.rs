//! The request the `authorize` and `route` hooks see: the edge's own method, URI and header
//! map, moved into the instance's store for the call (no copy) and read by the plugin
//! through the `request` resource's accessors, so a plugin pays only for what it reads.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method, Uri, header};
use wasmtime::component::Resource;

use crate::generated::route::tessera::policy::types::{self, Protocol};
use crate::memo::Read;
use crate::sandbox::State;

/// A request as the edge received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// It arrived over TLS or QUIC (the scheme is `https`).
    pub tls: bool,
    /// The target (origin-form for HTTP/1.1; with scheme and authority for HTTP/2 and 3).
    pub uri: Uri,
    pub headers: HeaderMap,
    pub client: IpAddr,
    pub protocol: Protocol,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: Method::GET,
            tls: false,
            uri: Uri::default(),
            headers: HeaderMap::new(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            protocol: Protocol::Http1,
        }
    }
}

impl Request {
    /// The host the client asked for (`Host`, else the target's authority), lower case.
    pub fn authority(&self) -> Cow<'_, str> {
        let host = self
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        }
    }

    /// The first value of header `name`, if it is valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// Every value of header `name` that is valid UTF-8.
    pub fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> {
        self.headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
    }

    /// Every header whose value is valid UTF-8.
    pub fn header_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
    }
}

/// A `header-values` answer as the plugin gets it: the filed string holds the values joined
/// by newlines, which no header value can hold.
pub(crate) fn values_of(joined: Option<String>) -> Vec<String> {
    match joined {
        Some(joined) => joined.split('\n').map(str::to_string).collect(),
        None => Vec::new(),
    }
}

/// A `headers` answer as the plugin gets it: the filed string holds `name: value` lines (a
/// name holds no ':', a value no newline).
pub(crate) fn pairs_of(joined: &str) -> Vec<(String, String)> {
    joined
        .split('\n')
        .filter_map(|l| {
            let (k, v) = l.split_once(": ")?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The one handle a call passes: a plugin can reach no request but the one of its call,
/// so every handle means the store's current request.
pub(crate) fn handle() -> Resource<types::Request> {
    Resource::new_borrow(0)
}

/// Each accessor answers from the call's request and records the question and its answer
/// ([`crate::memo`]).
impl types::HostRequest for State {
    fn method(&mut self, _: Resource<types::Request>) -> String {
        self.read(Read::Method).unwrap_or_default()
    }

    fn scheme(&mut self, _: Resource<types::Request>) -> String {
        self.read(Read::Scheme).unwrap_or_default()
    }

    fn authority(&mut self, _: Resource<types::Request>) -> String {
        self.read(Read::Authority).unwrap_or_default()
    }

    fn path(&mut self, _: Resource<types::Request>) -> String {
        self.read(Read::Path).unwrap_or_default()
    }

    fn query(&mut self, _: Resource<types::Request>) -> Option<String> {
        self.read(Read::Query)
    }

    fn header(&mut self, _: Resource<types::Request>, name: String) -> Option<String> {
        self.read(Read::Header(name.to_ascii_lowercase()))
    }

    fn header_values(&mut self, _: Resource<types::Request>, name: String) -> Vec<String> {
        values_of(self.read(Read::HeaderValues(name.to_ascii_lowercase())))
    }

    fn headers(&mut self, _: Resource<types::Request>) -> Vec<(String, String)> {
        pairs_of(&self.read(Read::Headers).unwrap_or_default())
    }

    fn client(&mut self, _: Resource<types::Request>) -> String {
        self.read(Read::Client).unwrap_or_default()
    }

    fn protocol(&mut self, _: Resource<types::Request>) -> Protocol {
        self.read(Read::Protocol);
        self.request.protocol
    }

    fn drop(&mut self, _: Resource<types::Request>) -> wasmtime::Result<()> {
        // Only borrows are ever handed out; there is nothing to free.
        Ok(())
    }
}

impl types::Host for State {}
