//! TLS for the test peers: CAs made with rcgen, server certificates for 127.0.0.1 and
//! localhost, and a listener whose certificate can change while it runs (a rotation).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub type Ca = CertifiedIssuer<'static, KeyPair>;

/// A self-signed CA named `name`.
pub fn new_ca(name: &str) -> Ca {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for 127.0.0.1 and localhost that `ca` signed: the chain (ending with
/// the CA) and the key.
pub fn server_identity(ca: &Ca) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let mut p =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "test peer");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    (
        vec![cert.der().clone(), ca.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A server presenting [`server_identity`] of `ca`, asking no client certificate.
pub fn server_config(ca: &Ca) -> rustls::ServerConfig {
    let (chain, key) = server_identity(ca);
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap()
}

/// TLS in front of a test server: each handshake uses the configuration set last, and its
/// outcome is recorded.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: Arc<Mutex<tokio_rustls::TlsAcceptor>>,
    handshakes: Arc<Mutex<Vec<Result<(), String>>>>,
}

impl ServerTls {
    pub fn new(config: rustls::ServerConfig) -> ServerTls {
        ServerTls {
            acceptor: Arc::new(Mutex::new(Arc::new(config).into())),
            handshakes: Arc::default(),
        }
    }

    /// Handshakes from now on present `config` (connections already open keep theirs).
    pub fn set(&self, config: rustls::ServerConfig) {
        *self.acceptor.lock().unwrap() = Arc::new(config).into();
    }

    /// Every handshake so far: Ok, or the server's error.
    pub fn handshakes(&self) -> Vec<Result<(), String>> {
        self.handshakes.lock().unwrap().clone()
    }
}

/// Serves `app` on 127.0.0.1 (a free port), behind `tls` when given; returns the port.
pub async fn serve(app: axum::Router, tls: Option<&ServerTls>) -> u16 {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    match tls {
        None => tokio::spawn(async move { axum::serve(tcp, app).await }),
        Some(tls) => {
            let listener = TlsListener {
                tcp,
                tls: tls.clone(),
            };
            tokio::spawn(async move { axum::serve(listener, app).await })
        }
    };
    port
}

/// Handshakes one connection at a time, recording each outcome.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    tls: ServerTls,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let acceptor = self.tls.acceptor.lock().unwrap().clone();
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
            let outcome = match handshake {
                Ok(Ok(tls)) => {
                    self.tls.handshakes.lock().unwrap().push(Ok(()));
                    return (tls, addr);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "handshake timed out".into(),
            };
            self.tls.handshakes.lock().unwrap().push(Err(outcome));
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}
