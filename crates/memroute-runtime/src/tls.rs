//! TLS with rustls: the client-facing listeners (memcached's `-Z` and
//! `-o ssl_*` options) and the connections to backends (`mcp.init_tls`,
//! `mcp.backend{tls = true}`).
//!
//! # Client side
//! [`ServerTls`] holds the server's certificate and the client-certificate
//! policy. Each accepted connection takes the configuration current at that
//! moment, so [`ServerTls::reload`] (SIGHUP) changes what new connections
//! see and leaves established ones alone; a reload that fails keeps the old
//! configuration. Verify modes follow memcached's `ssl_verify_mode`: 0 asks
//! for no client certificate, 1 asks for one and checks it if the client
//! sends one, 2 and 3 require one (3 is OpenSSL's "only once", which means
//! nothing without renegotiation, which rustls never does).
//!
//! # Backend side
//! [`ClientTls`] is what `mcp.init_tls` builds: the roots a backend's
//! certificate must chain to (the system's, or a CA file) and, optionally,
//! a client certificate. Verification is on unless the startfile turns it
//! off explicitly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// memcached's `ssl_verify_mode`: what is asked of a client's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyMode {
    /// 0: no client certificate is asked for (memcached's default).
    #[default]
    None,
    /// 1: a certificate is asked for and checked if the client sends one;
    /// a client without one is still served.
    Request,
    /// 2: a client without a valid certificate is refused.
    Require,
    /// 3: as 2 (OpenSSL's "client once" only matters on renegotiation).
    Once,
}

impl VerifyMode {
    /// memcached's numbering (`-o ssl_verify_mode=N`).
    pub fn from_number(n: &str) -> Option<VerifyMode> {
        match n {
            "0" => Some(VerifyMode::None),
            "1" => Some(VerifyMode::Request),
            "2" => Some(VerifyMode::Require),
            "3" => Some(VerifyMode::Once),
            _ => None,
        }
    }

    /// What memcached's `stats settings` shows: OpenSSL's verify flags
    /// (`SSL_VERIFY_PEER` 1, `FAIL_IF_NO_PEER_CERT` 2, `CLIENT_ONCE` 4).
    pub fn openssl_flags(self) -> u32 {
        match self {
            VerifyMode::None => 0,
            VerifyMode::Request => 1,
            VerifyMode::Require => 3,
            VerifyMode::Once => 7,
        }
    }
}

/// memcached's `ssl_min_version`; rustls speaks TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    /// 2: TLS 1.2 (memcached's default).
    #[default]
    Tls12,
    /// 3: TLS 1.3.
    Tls13,
}

impl MinVersion {
    /// The name memcached's `stats settings` shows.
    pub fn name(self) -> &'static str {
        match self {
            MinVersion::Tls12 => "tlsv1.2",
            MinVersion::Tls13 => "tlsv1.3",
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY_13: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            MinVersion::Tls12 => &BOTH,
            MinVersion::Tls13 => &ONLY_13,
        }
    }
}

/// The client-facing TLS settings (`-Z` with `-o ssl_*` or the `--tls-*`
/// flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain, PEM (`ssl_chain_cert`).
    pub chain_cert: PathBuf,
    /// The private key, PEM (`ssl_key`); without it the key is looked for
    /// in the chain file, as memcached does.
    pub key: Option<PathBuf>,
    /// CAs that client certificates must chain to (`ssl_ca_cert`); needed
    /// by verify modes 1 to 3.
    pub ca_cert: Option<PathBuf>,
    pub verify_mode: VerifyMode,
    pub min_version: MinVersion,
}

/// Client-facing TLS: the configuration new connections get, reloadable.
pub struct ServerTls {
    settings: TlsSettings,
    current: RwLock<tokio_rustls::TlsAcceptor>,
    /// When the certificates were last loaded (unix seconds).
    loaded_at: AtomicU64,
    /// Handshakes that failed (memcached's `ssl_handshake_errors`).
    handshake_errors: AtomicU64,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Loads the certificate, key and CA files; any problem is an error
    /// that names the file.
    pub fn new(settings: TlsSettings) -> Result<ServerTls, String> {
        let config = server_config(&settings)?;
        Ok(ServerTls {
            settings,
            current: RwLock::new(tokio_rustls::TlsAcceptor::from(config)),
            loaded_at: AtomicU64::new(unix_now()),
            handshake_errors: AtomicU64::new(0),
        })
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// What a new connection handshakes with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again; new connections use them from now on. On
    /// an error the current configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let config = server_config(&self.settings)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            tokio_rustls::TlsAcceptor::from(config);
        self.loaded_at.store(unix_now(), Relaxed);
        Ok(())
    }

    /// Seconds since the certificates were (re)loaded (memcached's
    /// `time_since_server_cert_refresh`).
    pub fn since_refresh(&self) -> u64 {
        unix_now().saturating_sub(self.loaded_at.load(Relaxed))
    }

    pub fn handshake_failed(&self) {
        self.handshake_errors.fetch_add(1, Relaxed);
    }

    pub fn handshake_errors(&self) -> u64 {
        self.handshake_errors.load(Relaxed)
    }
}

fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = load_certs(&settings.chain_cert, "certificate chain (ssl_chain_cert)")?;
    let key_path = settings.key.as_deref().unwrap_or(&settings.chain_cert);
    let key = load_key(key_path)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(settings.min_version.versions())
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match settings.verify_mode {
        VerifyMode::None => builder.with_no_client_auth(),
        mode => {
            let Some(ca) = &settings.ca_cert else {
                return Err(
                    "ssl_verify_mode 1, 2 and 3 check client certificates against \
                     ssl_ca_cert (--tls-ca): give the CA file"
                        .into(),
                );
            };
            let roots = root_store(ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if mode == VerifyMode::Request {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            settings.chain_cert.display(),
            key_path.display()
        )
    })?;
    // As memcached: no session resumption (ssl_session_cache is off).
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Every certificate in a PEM file; at least one.
pub fn load_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read_file(path, "private key (ssl_key)")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        format!(
            "private key (ssl_key) {}: no usable PEM private key: {e}",
            path.display()
        )
    })
}

fn root_store(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca, "CA certificate (ssl_ca_cert)")? {
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate {}: {e}", ca.display()))?;
    }
    Ok(roots)
}

tokio::task_local! {
    /// The common name of the client certificate, in the task of a TLS
    /// connection whose client sent one (`r:tls_peer_cn()`). Plain TCP
    /// connections run outside any scope of it.
    pub static PEER_CN: Option<std::rc::Rc<[u8]>>;
}

/// The client certificate's common name of the connection this task
/// serves, if it is a TLS connection with a client certificate.
pub fn current_peer_cn() -> Option<std::rc::Rc<[u8]>> {
    PEER_CN.try_with(|cn| cn.clone()).ok().flatten()
}

/// The common name of a DER certificate's subject (the first CN, as
/// memcached's `ssl_get_peer_cn` takes it), as its bytes.
pub fn peer_common_name(cert: &[u8]) -> Option<Vec<u8>> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serialNumber, signature, issuer, validity, subject, ... } }
    let (0x30, cert, _) = der(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = der(cert)? else {
        return None;
    };
    let (tag, _, mut rest) = der(tbs)?;
    // The serial number comes first when there is no version.
    let skip = if tag == 0xa0 { 4 } else { 3 };
    for _ in 0..skip {
        rest = der(rest)?.2;
    }
    let (0x30, mut subject, _) = der(rest)? else {
        return None;
    };
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value }
    while !subject.is_empty() {
        let (_, mut set, next) = der(subject)?;
        subject = next;
        while !set.is_empty() {
            let (_, pair, next) = der(set)?;
            set = next;
            let (0x06, oid, value) = der(pair)? else {
                continue;
            };
            // id-at-commonName, 2.5.4.3.
            if oid != [0x55, 0x04, 0x03] {
                continue;
            }
            let (kind, text, _) = der(value)?;
            return Some(match kind {
                // BMPString: UTF-16BE.
                0x1e => {
                    let units: Vec<u16> = text
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect();
                    String::from_utf16_lossy(&units).into_bytes()
                }
                _ => text.to_vec(),
            });
        }
    }
    None
}

/// One DER element: its tag, its contents and what follows it.
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `mcp.init_tls{...}`: how backends' certificates are checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTlsSettings {
    /// CA file the backends' certificates must chain to; the system's
    /// roots without it.
    pub ca: Option<PathBuf>,
    /// Whether certificates are verified (default true). False is the
    /// explicit opt-out.
    pub verify: bool,
    /// A client certificate and key to present to backends that ask.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// What `mcp.init_tls` built: the rustls client configuration backends
/// connect with.
#[derive(Clone)]
pub struct ClientTls {
    pub settings: ClientTlsSettings,
    /// A digest of the files read, so a reload that changes a file makes
    /// new backend connections (backends are kept across reloads when
    /// their settings are the same).
    fingerprint: u64,
    pub config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("settings", &self.settings)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && self.fingerprint == other.fingerprint
    }
}

impl ClientTls {
    pub fn new(settings: ClientTlsSettings) -> Result<ClientTls, String> {
        use std::hash::{Hash, Hasher};
        let mut digest = std::collections::hash_map::DefaultHasher::new();
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(MinVersion::Tls12.versions())
            .map_err(|e| format!("mcp.init_tls: {e}"))?;
        let builder = if !settings.verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
        } else {
            let mut roots = RootCertStore::empty();
            match &settings.ca {
                Some(ca) => {
                    read_file(ca, "CA file")
                        .map_err(|e| format!("mcp.init_tls: {e}"))?
                        .hash(&mut digest);
                    roots = root_store(ca).map_err(|e| format!("mcp.init_tls: {e}"))?;
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    for cert in found.certs {
                        // Some system bundles hold certificates webpki
                        // cannot use; skip those, as browsers do.
                        let _ = roots.add(cert);
                    }
                    if roots.is_empty() {
                        return Err("mcp.init_tls: no trusted root certificates found on \
                             this system; give a CA file: mcp.init_tls{ca = FILE}"
                            .into());
                    }
                }
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&settings.cert, &settings.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), key) => {
                let chain = load_certs(cert, "client certificate")
                    .map_err(|e| format!("mcp.init_tls: {e}"))?;
                let key_path = key.as_deref().unwrap_or(cert);
                read_file(cert, "client certificate")
                    .map_err(|e| format!("mcp.init_tls: {e}"))?
                    .hash(&mut digest);
                read_file(key_path, "client key")
                    .map_err(|e| format!("mcp.init_tls: {e}"))?
                    .hash(&mut digest);
                let key = load_key(key_path).map_err(|e| format!("mcp.init_tls: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("mcp.init_tls: client certificate: {e}"))?
            }
            (None, Some(_)) => {
                return Err("mcp.init_tls: key needs cert (the client certificate)".into())
            }
        };
        Ok(ClientTls {
            settings,
            fingerprint: digest.finish(),
            config: Arc::new(config),
        })
    }

    /// The name a backend's certificate must carry: an IP address or a
    /// DNS name.
    pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(bare.to_string())
            .map_err(|_| format!("{name:?} is not a host name or IP address for TLS"))
    }
}

/// How one backend speaks TLS (`mcp.backend{tls = true}`).
#[derive(Debug, Clone, PartialEq)]
pub struct BackendTls {
    /// What `mcp.init_tls` set up.
    pub client: ClientTls,
    /// The name the backend's certificate must carry (and the SNI sent):
    /// `tls_name`, else the backend's host.
    pub server_name: String,
}

/// `mcp.init_tls{verify = false}`: any certificate is accepted (the
/// handshake's signatures are still checked, so the session is encrypted,
/// but not authenticated).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(
            der(&[0x30, 0x01, 0xaa, 0xbb]),
            Some((0x30, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(
            der(&[0x04, 0x81, 0x02, 1, 2]),
            Some((0x04, &[1, 2][..], &[][..]))
        );
        assert_eq!(der(&[0x04, 0x05, 1]), None);
        assert_eq!(der(&[0x04, 0x80]), None);
    }

    #[test]
    fn common_name_of_a_handmade_certificate() {
        // SEQUENCE { SEQUENCE { [0]{INTEGER 2}, INTEGER 1, SEQ{}, SEQ{},
        // SEQ{}, subject } }
        fn wrap(tag: u8, body: &[u8]) -> Vec<u8> {
            let mut v = vec![tag, body.len() as u8];
            v.extend_from_slice(body);
            v
        }
        let mut cn = vec![0x06, 0x03, 0x55, 0x04, 0x03];
        cn.extend(wrap(0x0c, b"client-1"));
        let mut o = vec![0x06, 0x03, 0x55, 0x04, 0x0a];
        o.extend(wrap(0x0c, b"org"));
        let mut subject = wrap(0x31, &wrap(0x30, &o));
        subject.extend(wrap(0x31, &wrap(0x30, &cn)));
        let subject = wrap(0x30, &subject);
        let mut tbs = wrap(0xa0, &[0x02, 0x01, 0x02]);
        tbs.extend([0x02, 0x01, 0x01]);
        for _ in 0..3 {
            tbs.extend([0x30, 0x00]);
        }
        tbs.extend(subject);
        let cert = wrap(0x30, &wrap(0x30, &tbs));
        assert_eq!(peer_common_name(&cert), Some(b"client-1".to_vec()));
        assert_eq!(peer_common_name(&cert[..cert.len() - 3]), None);
    }

    #[test]
    fn verify_modes_are_memcacheds() {
        assert_eq!(VerifyMode::from_number("2"), Some(VerifyMode::Require));
        assert_eq!(VerifyMode::from_number("4"), None);
        assert_eq!(VerifyMode::Once.openssl_flags(), 7);
    }
}
