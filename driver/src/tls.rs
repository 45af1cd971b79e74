//! TLS for HTTPS trackers: rustls over a non-blocking byte stream the event loop owns.
//!
//! The tracker state machines in core produce and consume plain HTTP bytes; for an `https://`
//! tracker the driver puts a [`TlsStream`] between them and the socket. The shape follows rustls'
//! own mio example: feed ciphertext in with [`TlsStream::read_tls_from`], take plaintext out, queue
//! plaintext with [`TlsStream::write_plaintext`], and flush ciphertext with
//! [`TlsStream::write_tls_to`] while [`TlsStream::wants_write`] says so.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Why TLS could not be set up or failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// The extra CA file could not be read or holds no certificate.
    CaFile {
        /// The file given.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The tracker's host name is not valid for TLS.
    BadServerName(String),
    /// The TLS session failed (bad certificate, protocol error).
    Session(rustls::Error),
    /// The socket failed.
    Io(io::Error),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::CaFile { path, reason } => {
                write!(f, "CA file {}: {reason}", path.display())
            }
            TlsError::BadServerName(host) => write!(f, "invalid TLS server name {host:?}"),
            TlsError::Session(e) => write!(f, "TLS: {e}"),
            TlsError::Io(e) => write!(f, "TLS socket: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// Builds the client configuration: the usual web roots (Mozilla's, from `webpki-roots`), plus
/// every certificate in `extra_ca` (a PEM file) for private trackers and tests.
pub fn client_config(extra_ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let ca_err = |reason: String| TlsError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
            let cert = cert.map_err(|e| ca_err(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| ca_err(format!("unusable certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(ca_err("no PEM certificate in the file".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Session)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One TLS client session.
pub struct TlsStream {
    conn: ClientConnection,
}

/// What one [`TlsStream::read_tls_from`] call saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// The socket has no more bytes for now.
    WouldBlock,
    /// The peer closed the connection (cleanly or not); no more plaintext will come.
    Closed,
}

impl TlsStream {
    /// Starts a session to `host` (the name in the tracker URL, checked against the certificate).
    pub fn new(config: Arc<ClientConfig>, host: &str) -> Result<TlsStream, TlsError> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| TlsError::BadServerName(host.to_owned()))?;
        let conn = ClientConnection::new(config, name).map_err(TlsError::Session)?;
        Ok(TlsStream { conn })
    }

    /// Queues plaintext to send; it goes out (encrypted) through [`TlsStream::write_tls_to`].
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), TlsError> {
        self.conn.writer().write_all(data).map_err(TlsError::Io)
    }

    /// True while ciphertext is waiting to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Writes queued ciphertext to `socket` until it would block or nothing is left.
    pub fn write_tls_to(&mut self, socket: &mut impl Write) -> Result<(), TlsError> {
        while self.conn.wants_write() {
            match self.conn.write_tls(socket) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
        Ok(())
    }

    /// Reads ciphertext from `socket` until it would block or closes, appending the decrypted
    /// plaintext to `plaintext`; more than `limit` bytes of plaintext is an error, so a peer
    /// streaming faster than we read cannot grow the buffer without bound.
    pub fn read_tls_from(
        &mut self,
        socket: &mut impl Read,
        plaintext: &mut Vec<u8>,
        limit: usize,
    ) -> Result<ReadState, TlsError> {
        let too_much = || TlsError::Io(io::Error::other("more data than any reply may hold"));
        loop {
            match self.conn.read_tls(socket) {
                Ok(0) => {
                    self.drain_plaintext(plaintext)?;
                    if plaintext.len() > limit {
                        return Err(too_much());
                    }
                    return Ok(ReadState::Closed);
                }
                Ok(_) => {
                    self.conn.process_new_packets().map_err(TlsError::Session)?;
                    let closed = self.drain_plaintext(plaintext)?;
                    if plaintext.len() > limit {
                        return Err(too_much());
                    }
                    if closed {
                        return Ok(ReadState::Closed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok(ReadState::WouldBlock);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
    }

    /// Moves decrypted bytes into `out`; true when the peer sent close_notify.
    fn drain_plaintext(&mut self, out: &mut Vec<u8>) -> Result<bool, TlsError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match self.conn.reader().read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                // An abrupt close without close_notify: treat what arrived as final; HTTP
                // framing (Content-Length or chunked) decides whether the reply is whole.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
                Err(e) => return Err(TlsError::Io(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_file_is_a_clear_error() {
        let err = client_config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(
            err.to_string().starts_with("CA file /nonexistent/ca.pem: "),
            "{err}"
        );
        let dir = std::env::temp_dir().join(format!("kp-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, b"not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn web_roots_load_and_bad_names_are_refused() {
        let config = client_config(None).unwrap();
        assert!(TlsStream::new(config.clone(), "tracker.example.org").is_ok());
        assert!(matches!(
            TlsStream::new(config, "bad name!"),
            Err(TlsError::BadServerName(_))
        ));
    }
}
