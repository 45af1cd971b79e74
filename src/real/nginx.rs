//! nginx (Debian `nginx-light`) on 127.0.0.1 as a static HTTP server: a BEP 19 web seed.
//!
//! Started as `nginx -c CONF -p DIR` with `daemon off;` and `master_process off;` so the process
//! we spawn is the one serving (killed and reaped on drop), listening on `127.0.0.1:PORT` with a
//! free port; the pid file, error and access logs and every temp path live in the harness's temp
//! folder, so no root and no system path is needed. nginx serves byte ranges of static files
//! (`206` with `Content-Range`) by default.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{RealProcess, free_port, wait_for, work_dir};
use crate::{TempDir, TestCa, require_tool};

/// How long nginx gets to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running nginx serving one folder.
pub struct Nginx {
    process: RealProcess,
    port: u16,
    tls: bool,
    dir: TempDir,
}

impl Nginx {
    /// Serves `root` at `http://127.0.0.1:PORT/` on a free port and waits until it answers;
    /// `None` (skip) when nginx is missing outside CI.
    pub fn start(root: &Path) -> Option<Nginx> {
        Nginx::start_with(root, None)
    }

    /// [`Nginx::start`] over HTTPS with `ca`'s server certificate (valid for `localhost` and
    /// `127.0.0.1`): [`Nginx::url`] then gives `https://localhost:PORT/…`.
    pub fn start_tls(root: &Path, ca: &TestCa) -> Option<Nginx> {
        Nginx::start_with(root, Some(ca))
    }

    fn start_with(root: &Path, tls: Option<&TestCa>) -> Option<Nginx> {
        let program = if Path::new("/usr/sbin/nginx").is_file() {
            PathBuf::from("/usr/sbin/nginx")
        } else {
            require_tool("nginx")?
        };
        let dir = work_dir("nginx");
        let root = root.canonicalize().expect("the served folder exists");
        for attempt in 0..5 {
            let port = free_port();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, config(dir.path(), &root, port, tls)).expect("write nginx.conf");
            // `-e` so that not even the start-up log goes to a system path.
            let args: Vec<String> = vec![
                "-e".into(),
                dir.path().join("error.log").to_string_lossy().into_owned(),
                "-c".into(),
                conf.to_string_lossy().into_owned(),
                "-p".into(),
                dir.path().to_string_lossy().into_owned(),
            ];
            let name = format!("nginx{attempt}");
            let mut process = RealProcess::spawn(&name, &program, &args, dir.path());
            let up = wait_for(START_TIMEOUT, || {
                if process.exit_status().is_some() {
                    return Some(false);
                }
                let up = if tls.is_some() {
                    accepts(port)
                } else {
                    answers(port)
                };
                up.then_some(true)
            });
            match up {
                Some(true) => {
                    return Some(Nginx {
                        process,
                        port,
                        tls: tls.is_some(),
                        dir,
                    });
                }
                // Most likely the port was taken between free_port and bind: try another.
                Some(false) => continue,
                None => process.fail("did not answer within 15 s"),
            }
        }
        panic!("nginx exited at start 5 times (ports taken?)");
    }

    /// `http://127.0.0.1:PORT/` (over TLS `https://localhost:PORT/`) followed by `path`.
    pub fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}/{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}/{path}", self.port)
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The running process (log, pid).
    pub fn process(&self) -> &RealProcess {
        &self.process
    }

    /// The access log so far: one line per request (`GET /path HTTP/1.1 206 BYTES range=…`).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Requests in the access log that were answered with `status`.
    pub fn requests_with_status(&self, status: u16) -> usize {
        let needle = format!(" HTTP/1.1 {status} ");
        self.access_log()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

/// The configuration: one server, static files from `root`, everything else inside `dir`.
fn config(dir: &Path, root: &Path, port: u16, tls: Option<&TestCa>) -> String {
    let d = dir.display();
    let listen = match tls {
        Some(ca) => format!(
            "listen 127.0.0.1:{port} ssl;\n\
             \x20   ssl_certificate {};\n\
             \x20   ssl_certificate_key {};",
            ca.cert_pem.display(),
            ca.key_pem.display()
        ),
        None => format!("listen 127.0.0.1:{port};"),
    };
    format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {d}/nginx.pid;\n\
         error_log {d}/error.log info;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20 log_format ranges '$request $status $body_bytes_sent range=$http_range';\n\
         \x20 access_log {d}/access.log ranges;\n\
         \x20 client_body_temp_path {d}/client_body;\n\
         \x20 proxy_temp_path {d}/proxy;\n\
         \x20 fastcgi_temp_path {d}/fastcgi;\n\
         \x20 uwsgi_temp_path {d}/uwsgi;\n\
         \x20 scgi_temp_path {d}/scgi;\n\
         \x20 default_type application/octet-stream;\n\
         \x20 sendfile on;\n\
         \x20 keepalive_requests 1000;\n\
         \x20 server {{\n\
         \x20   {listen}\n\
         \x20   root {root};\n\
         \x20 }}\n\
         }}\n",
        root = root.display()
    )
}

/// True when something on `port` accepts a connection.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// True when something on `port` answers an HTTP request.
fn answers(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"HEAD / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1")
}
