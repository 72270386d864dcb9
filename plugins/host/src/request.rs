//! The request the `authorize` and `route` hooks see: the edge's own method, URI and header
//! map, moved into the instance's store for the call (no copy) and read by the plugin
//! through the `request` resource's accessors, so a plugin pays only for what it reads.

use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, Method, Uri, header};
use wasmtime::component::Resource;

use crate::generated::route::tessera::policy::types::{self, Protocol};
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
    pub fn authority(&self) -> String {
        let host = self
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| self.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        host.to_ascii_lowercase()
    }
}

/// The one handle a call passes: a plugin can reach no request but the one of its call,
/// so every handle means the store's current request.
pub(crate) fn handle() -> Resource<types::Request> {
    Resource::new_borrow(0)
}

impl types::HostRequest for State {
    fn method(&mut self, _: Resource<types::Request>) -> String {
        self.request.method.as_str().to_string()
    }

    fn scheme(&mut self, _: Resource<types::Request>) -> String {
        if self.request.tls { "https" } else { "http" }.to_string()
    }

    fn authority(&mut self, _: Resource<types::Request>) -> String {
        self.request.authority()
    }

    fn path(&mut self, _: Resource<types::Request>) -> String {
        self.request.uri.path().to_string()
    }

    fn query(&mut self, _: Resource<types::Request>) -> Option<String> {
        self.request.uri.query().map(str::to_string)
    }

    fn header(&mut self, _: Resource<types::Request>, name: String) -> Option<String> {
        self.request
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn header_values(&mut self, _: Resource<types::Request>, name: String) -> Vec<String> {
        self.request
            .headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|v| Some(v.to_str().ok()?.to_string()))
            .collect()
    }

    fn headers(&mut self, _: Resource<types::Request>) -> Vec<(String, String)> {
        self.request
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect()
    }

    fn client(&mut self, _: Resource<types::Request>) -> String {
        self.request.client.to_string()
    }

    fn protocol(&mut self, _: Resource<types::Request>) -> Protocol {
        self.request.protocol
    }

    fn drop(&mut self, _: Resource<types::Request>) -> wasmtime::Result<()> {
        // Only borrows are ever handed out; there is nothing to free.
        Ok(())
    }
}

impl types::Host for State {}
