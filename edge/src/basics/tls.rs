//! Certificates and the rustls server configuration.
//!
//! The crypto provider is ring, passed explicitly to every config this crate builds, so the
//! library does not depend on a process-wide default (the `tessera` binary installs ring as
//! the default once at start, for anything else that asks).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain and its key, read from PEM files.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// Where the certificate was read from.
    pub cert_path: PathBuf,
    /// Whether it was generated here (a development certificate).
    pub generated: bool,
}

/// Errors loading or making a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or unreadable or holds no certificate/key.
    #[error("cannot read {path}: {why}")]
    Read { path: PathBuf, why: String },
    /// Generating the development certificate failed.
    #[error("cannot make a development certificate: {0}")]
    Generate(String),
    /// rustls refused the certificate and key (for example a key that does not match).
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Reads `cert` and `key` (PEM).
pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
    let read_err = |path: &Path, why: String| TlsError::Read {
        path: path.to_path_buf(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| read_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(read_err(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| read_err(key, e.to_string()))?;
    Ok(Identity {
        certs,
        key: key_der,
        cert_path: cert.to_path_buf(),
        generated: false,
    })
}

/// The development certificate in `dir` (`dev-cert.pem`, `dev-key.pem`), made on first use
/// for `localhost`, `127.0.0.1` and `::1`, and reused after, so a browser exception or a
/// pinned key hash stays valid across restarts.
pub fn development(dir: &Path) -> Result<Identity, TlsError> {
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    if !cert.exists() || !key.exists() {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })?;
        let made = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        // The key is readable by its owner only (mode 0600), the certificate by anyone.
        let write = |p: &Path, s: String, mode: u32| {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(p)
                .and_then(|mut f| f.write_all(s.as_bytes()))
                .map_err(|e| TlsError::Read {
                    path: p.to_path_buf(),
                    why: e.to_string(),
                })
        };
        write(&key, made.signing_key.serialize_pem(), 0o600)?;
        write(&cert, made.cert.pem(), 0o644)?;
    }
    // A key written by an older version with a looser mode is tightened.
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(&key)
        && m.permissions().mode() & 0o077 != 0
    {
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    }
    let mut id = load(&cert, &key)?;
    id.generated = true;
    Ok(id)
}

/// A rustls server configuration offering `alpn` (for example `h2`, `http/1.1`).
pub fn server_config(id: &Identity, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_certificate_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = development(dir.path()).unwrap();
        let b = development(dir.path()).unwrap();
        assert!(a.generated);
        assert_eq!(a.certs, b.certs);
        server_config(&a, &[b"h2", b"http/1.1"]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("dev-key.pem"), 0o600, "the key is its owner's alone");
        // One left readable by an older version is tightened.
        let key = dir.path().join("dev-key.pem");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        development(dir.path()).unwrap();
        assert_eq!(mode("dev-key.pem"), 0o600);
    }

    #[test]
    fn missing_files_name_the_path() {
        let e = load(
            Path::new("/nonexistent/c.pem"),
            Path::new("/nonexistent/k.pem"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }
}
