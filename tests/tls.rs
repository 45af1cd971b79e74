//! The driver's TLS client against an in-process rustls server with a certificate from a test CA.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kp_torrent::tls::{ReadState, TlsError, TlsStream, client_config};
use kp_torrent_tests::{TempDir, TestCa, make_test_ca};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Serves one connection: reads a line, answers `echo: <line>` and closes.
fn spawn_server(ca: &TestCa) -> (u16, std::thread::JoinHandle<()>) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&ca.cert_pem)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(&ca.key_pem).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        let mut line = Vec::new();
        {
            let mut tls = rustls::Stream::new(&mut conn, &mut sock);
            let mut byte = [0u8; 1];
            while matches!(tls.read(&mut byte), Ok(1)) && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            let _ = tls.write_all(b"echo: ");
            let _ = tls.write_all(&line);
        }
        conn.send_close_notify();
        let _ = conn.complete_io(&mut sock);
    });
    (port, handle)
}

/// Drives a non-blocking client until the server closes, returning the plaintext received.
fn exchange(
    host: &str,
    port: u16,
    ca: Option<&std::path::Path>,
    limit: usize,
) -> Result<Vec<u8>, TlsError> {
    let mut tls = TlsStream::new(client_config(ca)?, host)?;
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_nonblocking(true).unwrap();
    tls.write_plaintext(b"hello tracker\n")?;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        tls.write_tls_to(&mut sock)?;
        if tls.read_tls_from(&mut sock, &mut got, limit)? == ReadState::Closed {
            return Ok(got);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("TLS exchange did not finish in 10 s");
}

#[test]
fn client_trusts_the_extra_ca_and_exchanges_bytes() {
    let dir = TempDir::new("tls-ok");
    let Some(ca) = make_test_ca(dir.path()) else {
        return;
    };
    let (port, server) = spawn_server(&ca);
    let got = exchange("localhost", port, Some(&ca.ca_pem), 1 << 20).unwrap();
    assert_eq!(got, b"echo: hello tracker");
    server.join().unwrap();
}

#[test]
fn client_refuses_a_certificate_outside_its_roots() {
    let dir = TempDir::new("tls-untrusted");
    let Some(ca) = make_test_ca(dir.path()) else {
        return;
    };
    let (port, _server) = spawn_server(&ca);
    let err = exchange("localhost", port, None, 1 << 20).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn client_refuses_a_name_the_certificate_does_not_cover() {
    let dir = TempDir::new("tls-name");
    let Some(ca) = make_test_ca(dir.path()) else {
        return;
    };
    let (port, _server) = spawn_server(&ca);
    let err = exchange("tracker.invalid", port, Some(&ca.ca_pem), 1 << 20).unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn more_plaintext_than_the_limit_is_an_error() {
    let dir = TempDir::new("tls-limit");
    let Some(ca) = make_test_ca(dir.path()) else {
        return;
    };
    let (port, _server) = spawn_server(&ca);
    // The server answers 19 bytes; a 4-byte limit must stop the read with an error.
    let err = exchange("localhost", port, Some(&ca.ca_pem), 4).unwrap_err();
    assert!(
        err.to_string().contains("more data than any reply"),
        "{err}"
    );
}
