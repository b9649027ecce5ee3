//! TLS and plaintext HTTP/2 on one port.
//!
//! Each accepted connection is classified by its first byte: `0x16` starts a TLS ClientHello, so
//! the connection is handed to rustls; anything else (the h2c preface `PRI * HTTP/2.0`) is served
//! in plaintext. The Node Wechaty client speaks TLS by default and the Python one only plaintext,
//! so both reach the same server without any client setting.
//!
//! The certificate is served through a fixed [`ResolvesServerCert`] built directly from the PEM:
//! rustls' single-certificate path parses the certificate with webpki and refuses X.509 v1, which
//! is what Wechaty's published "insecure" pair is.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::Connected;

use crate::metrics::{Port, RefuseReason};
use crate::net::{self, Gate, PeerInfo, Tracked};

/// Classified connections waiting for the gRPC server; the accept loop waits when it is full.
const PENDING_CONNECTIONS: usize = 64;

#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// PEM text given either inline (Wechaty's env vars, where newlines may be a literal `\n`) or as a
/// file path.
pub fn pem_text(value: &str, what: &str) -> anyhow::Result<String> {
    if value.contains("-----BEGIN") {
        Ok(value.replace("\\n", "\n"))
    } else {
        std::fs::read_to_string(value).map_err(|e| anyhow::anyhow!("{what}: cannot read {value}: {e}"))
    }
}

/// A TLS acceptor (ALPN h2) for this certificate chain and key.
pub fn acceptor(cert_pem: &str, key_pem: &str) -> anyhow::Result<TlsAcceptor> {
    acceptor_for(cert_pem, key_pem, b"h2")
}

/// A TLS acceptor offering `alpn` (the side port's HTTP/1.1 for discovery).
pub fn acceptor_for(cert_pem: &str, key_pem: &str, alpn: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("TLS certificate: {e:?}"))?;
    if chain.is_empty() {
        anyhow::bail!("TLS certificate: no PEM certificate found");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| anyhow::anyhow!("TLS key: {e:?}"))?;
    let signing_key = tokio_rustls::rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("TLS key: {e}"))?;
    let certified = Arc::new(CertifiedKey::new(chain, signing_key));
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("TLS: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(FixedCert(certified)));
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// What `--tls-self-signed NAME` generated (or found from an earlier start) in the data dir.
pub struct SelfSigned {
    /// The CA certificate clients must trust (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM), for NAME.
    pub cert_pem: String,
    /// The server key (PEM).
    pub key_pem: String,
}

/// Loads the CA and server certificate for `name` from `dir`, generating them on first use. The
/// certificate also names `localhost` and 127.0.0.1: discovery clients reach the side port by
/// address (`WECHATY_PUPPET_SERVICE_AUTHORITY=127.0.0.1:8080`) and check it over HTTPS.
pub fn self_signed(dir: &Path, name: &str) -> anyhow::Result<SelfSigned> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let (ca_path, cert_path, key_path) =
        (dir.join("ca.pem"), dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    if let (Ok(ca_pem), Ok(cert_pem), Ok(key_pem)) =
        (std::fs::read_to_string(&ca_path), std::fs::read_to_string(&cert_path), std::fs::read_to_string(&key_path))
    {
        return Ok(SelfSigned { ca_pem, cert_pem, key_pem });
    }
    let err = |e: rcgen::Error| anyhow::anyhow!("generating TLS certificates: {e}");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "puppet-rs local CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(err)?).map_err(err)?;
    let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(err)?;
    if name != "localhost" {
        params.subject_alt_names.push(rcgen::SanType::DnsName("localhost".try_into().map_err(err)?));
    }
    params.subject_alt_names.push(rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    let out = SelfSigned { ca_pem: ca.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() };
    std::fs::create_dir_all(dir)?;
    std::fs::write(&ca_path, &out.ca_pem)?;
    std::fs::write(&cert_path, &out.cert_pem)?;
    crate::config::write_private(&key_path, &out.key_pem)?;
    Ok(out)
}

/// One accepted connection, plaintext or TLS.
pub enum Conn {
    /// h2c.
    Plain(TcpStream),
    /// HTTP/2 over TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// Plaintext, or TLS once its handshake is done: told apart by the first byte when TLS is on.
pub(crate) async fn classify(stream: TcpStream, tls: Option<TlsAcceptor>) -> io::Result<Conn> {
    let Some(acceptor) = tls else { return Ok(Conn::Plain(stream)) };
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 1 && first[0] == 0x16 {
        Ok(Conn::Tls(Box::new(acceptor.accept(stream).await?)))
    } else {
        Ok(Conn::Plain(stream))
    }
}

impl Connected for Tracked<Conn> {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer().clone()
    }
}

/// Accepts connections through `gate` until `stop` and yields them classified, each wrapped in
/// [`Tracked`] (idle timeout, cap slot). Classification and TLS handshakes run concurrently, at most
/// `max_handshakes` at once, each bounded by the handshake timeout; a failed one is counted and
/// dropped. Every task is owned by `tasks`.
pub fn incoming(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Gate,
    stop: CancellationToken,
    tasks: TaskTracker,
) -> ReceiverStream<io::Result<Tracked<Conn>>> {
    let (tx, rx) = mpsc::channel(PENDING_CONNECTIONS);
    let limits = gate.limits();
    let accepting = net::accept_loop(listener, Port::Grpc, gate.clone(), stop, {
        let tasks = tasks.clone();
        move |admitted| {
            let Some(handshake) = gate.handshake(Port::Grpc) else { return };
            let (sender, tls, gate) = (tx.clone(), tls.clone(), gate.clone());
            tasks.spawn(async move {
                let net::Admitted { stream, peer, slot } = admitted;
                let classified = tokio::time::timeout(limits.handshake_timeout, classify(stream, tls)).await;
                drop(handshake);
                match classified {
                    Ok(Ok(conn)) => _ = sender.send(Ok(Tracked::new(conn, peer, slot, limits.idle_timeout))).await,
                    Ok(Err(e)) => {
                        gate.metrics().refused(Port::Grpc, RefuseReason::tls);
                        tracing::debug!(%peer, error = %e, "connection dropped during the TLS handshake");
                    }
                    Err(_) => {
                        gate.metrics().refused(Port::Grpc, RefuseReason::handshake_timeout);
                        tracing::debug!(%peer, "connection dropped: no handshake within the timeout");
                    }
                }
            });
        }
    });
    tasks.spawn(accepting);
    ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_comes_inline_with_literal_newlines_or_from_a_file() {
        assert_eq!(pem_text("-----BEGIN X-----\\nabc", "cert").unwrap(), "-----BEGIN X-----\nabc");
        let e = pem_text("/no/such/file.pem", "cert").unwrap_err().to_string();
        assert!(e.contains("/no/such/file.pem"), "{e}");
    }

    #[test]
    fn self_signed_certificates_are_generated_once_and_load() {
        let dir = std::env::temp_dir().join(format!("puppet-tls-{}", uuid::Uuid::new_v4()));
        let first = self_signed(&dir, "puppet-test").unwrap();
        let again = self_signed(&dir, "puppet-test").unwrap();
        assert_eq!(first.ca_pem, again.ca_pem, "kept, not regenerated");
        acceptor(&first.cert_pem, &first.key_pem).unwrap();
        assert!(acceptor(&first.cert_pem, "not a key").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
