//! The plugins built from `plugins/guests/` by this crate's build script, embedded, so
//! `tessera plugin deploy` can name them and the tests can deploy them.

/// `signed-url` (authorize): CloudFront-style signed URLs.
pub const SIGNED_URL: &[u8] = include_bytes!(env!("TESSERA_PLUGIN_SIGNED_URL"));
/// `router` (route): prefix, host and header routing, canary splits, redirects.
pub const ROUTER: &[u8] = include_bytes!(env!("TESSERA_PLUGIN_ROUTER"));
/// `size-eviction` (eviction): large objects on SSD only, types never cached, long TTLs.
pub const SIZE_EVICTION: &[u8] = include_bytes!(env!("TESSERA_PLUGIN_SIZE_EVICTION"));
/// `hostile` (all hooks): misbehaves on purpose, for tests. Not for production.
pub const HOSTILE: &[u8] = include_bytes!(env!("TESSERA_PLUGIN_HOSTILE"));

/// A shipped plugin by name, with the hook it serves.
pub fn by_name(name: &str) -> Option<(&'static [u8], crate::Hook)> {
    match name {
        "signed-url" => Some((SIGNED_URL, crate::Hook::Authorize)),
        "router" => Some((ROUTER, crate::Hook::Route)),
        "size-eviction" => Some((SIZE_EVICTION, crate::Hook::Eviction)),
        _ => None,
    }
}
