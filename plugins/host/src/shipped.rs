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

/// The bytes of `spec` (a `.wasm` file, or the name of a shipped plugin when no such file
/// exists) and the name it goes by unless given one (the shipped name, or the file's stem).
pub fn load(spec: &str) -> std::io::Result<(Vec<u8>, String)> {
    let path = std::path::Path::new(spec);
    if let Some((bytes, _)) = by_name(spec)
        && !path.exists()
    {
        return Ok((bytes.to_vec(), spec.to_string()));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot read the plugin {spec}: {e} (give a .wasm file or one of signed-url, \
                 router, size-eviction)"
            ),
        )
    })?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    Ok((bytes, stem))
}

/// The query string (`expires=…&sig=…`) that makes `path` pass the `signed-url` plugin
/// deployed with this `key` and `algorithm` (`hmac-sha256` or `blake3`) until `expires`
/// (Unix seconds). `None` for an unknown algorithm.
pub fn sign_url(key: &[u8], algorithm: &str, path: &str, expires: u64) -> Option<String> {
    let message = format!("{path}?expires={expires}");
    let mac: Vec<u8> = match algorithm {
        "hmac-sha256" => {
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
            ring::hmac::sign(&k, message.as_bytes()).as_ref().to_vec()
        }
        "blake3" => {
            let k: [u8; 32] = key
                .try_into()
                .unwrap_or_else(|_| *blake3::hash(key).as_bytes());
            blake3::keyed_hash(&k, message.as_bytes())
                .as_bytes()
                .to_vec()
        }
        _ => return None,
    };
    let sig: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!("expires={expires}&sig={sig}"))
}
