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

/// How long a development certificate is valid.
pub const DEV_CERT_DAYS: i64 = 365;
/// A development certificate this close to its end, or valid longer than browsers accept
/// (398 days), is replaced at start.
const DEV_CERT_RENEW_DAYS: i64 = 30;
const MAX_CERT_DAYS: i64 = 398;

/// The development certificate in `dir` (`dev-cert.pem`, `dev-key.pem`) for `localhost`,
/// `127.0.0.1` and `::1`: valid for a year from when it was made, made on first use and
/// reused after; one that ends within 30 days (or is valid longer than browsers accept, as
/// older versions made them) is renewed with the same key, so a browser exception or a
/// pinned key hash stays valid across restarts and renewals.
pub fn development(dir: &Path) -> Result<Identity, TlsError> {
    development_at(dir, time::OffsetDateTime::now_utc())
}

/// [`development`] as of `now`.
pub fn development_at(dir: &Path, now: time::OffsetDateTime) -> Result<Identity, TlsError> {
    let cert = dir.join("dev-cert.pem");
    let key = dir.join("dev-key.pem");
    let io_err = |p: &Path, e: std::io::Error| TlsError::Read {
        path: p.to_path_buf(),
        why: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let gen_err = |e: rcgen::Error| TlsError::Generate(e.to_string());
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
            .map_err(|e| io_err(p, e))
    };
    let signing_key = match std::fs::read_to_string(&key) {
        Ok(pem) => rcgen::KeyPair::from_pem(&pem).map_err(|e| TlsError::Read {
            path: key.clone(),
            why: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = rcgen::KeyPair::generate().map_err(gen_err)?;
            write(&key, k.serialize_pem(), 0o600)?;
            let _ = std::fs::remove_file(&cert);
            k
        }
        Err(e) => return Err(io_err(&key, e)),
    };
    // A key written by an older version with a looser mode is tightened.
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(&key)
        && m.permissions().mode() & 0o077 != 0
    {
        let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
    }
    let renew = match validity(&cert) {
        Some((from, until)) => {
            until - now < time::Duration::days(DEV_CERT_RENEW_DAYS)
                || from > now
                || until - from > time::Duration::days(MAX_CERT_DAYS)
        }
        None => true,
    };
    if renew {
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .map_err(gen_err)?;
        // A day's margin for clocks behind this one.
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(DEV_CERT_DAYS);
        let made = params.self_signed(&signing_key).map_err(gen_err)?;
        write(&cert, made.pem(), 0o644)?;
    }
    let mut id = load(&cert, &key)?;
    id.generated = true;
    Ok(id)
}

/// The validity period of the first certificate in the PEM file `cert`, if it reads.
pub fn validity(cert: &Path) -> Option<(time::OffsetDateTime, time::OffsetDateTime)> {
    let der = CertificateDer::pem_file_iter(cert).ok()?.next()?.ok()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = parsed.validity();
    Some((v.not_before.to_datetime(), v.not_after.to_datetime()))
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
    fn development_certificate_lasts_a_year_and_is_renewed_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("dev-cert.pem");
        let key = dir.path().join("dev-key.pem");
        let now = time::OffsetDateTime::now_utc();
        let days = |d: i64| time::Duration::days(d);
        let a = development_at(dir.path(), now).unwrap();
        let (from, until) = validity(&cert).unwrap();
        assert!(from <= now && now < until);
        assert!((until - now - days(DEV_CERT_DAYS)).abs() < time::Duration::minutes(1));
        let key_pem = std::fs::read(&key).unwrap();

        // 100 days on it is kept; 340 days on (25 left) it is renewed with the same key.
        let b = development_at(dir.path(), now + days(100)).unwrap();
        assert_eq!(a.certs, b.certs);
        let c = development_at(dir.path(), now + days(340)).unwrap();
        assert_ne!(a.certs, c.certs, "renewed");
        assert_eq!(std::fs::read(&key).unwrap(), key_pem, "the key stays");
        let (_, until) = validity(&cert).unwrap();
        assert!(until - (now + days(340)) > days(DEV_CERT_DAYS - 1));
        let spki = |id: &Identity| {
            let (_, p) = x509_parser::parse_x509_certificate(&id.certs[0]).unwrap();
            p.public_key().raw.to_vec()
        };
        assert_eq!(spki(&a), spki(&c), "a pinned key hash stays valid");

        // A certificate an older version made (valid 1975 to 4096) is replaced.
        let k = rcgen::KeyPair::from_pem(&String::from_utf8(key_pem).unwrap()).unwrap();
        let old = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&k)
            .unwrap();
        std::fs::write(&cert, old.pem()).unwrap();
        let (from, until) = validity(&cert).unwrap();
        assert!(until - from > days(MAX_CERT_DAYS), "rcgen's default span");
        development_at(dir.path(), now).unwrap();
        let (from, until) = validity(&cert).unwrap();
        assert!(until - from <= days(DEV_CERT_DAYS + 1));
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
