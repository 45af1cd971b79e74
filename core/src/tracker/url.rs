//! Tracker URLs: parsing `http`, `https` and `udp` announce URLs, the announce-to-scrape rule,
//! resolving redirect `Location`s, and the percent-encoding of raw bytes in query strings.

use core::fmt;

use super::TrackerError;

/// The protocol a tracker URL asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scheme {
    /// Plain HTTP over TCP.
    Http,
    /// HTTP over TLS: the driver wraps the TCP stream; the bytes are the same as [`Scheme::Http`].
    Https,
    /// BEP 15 over UDP.
    Udp,
}

impl Scheme {
    /// The scheme as written in URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Udp => "udp",
        }
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Http => Some(80),
            Scheme::Https => Some(443),
            Scheme::Udp => None,
        }
    }
}

/// A parsed tracker URL. `host` is a name or an IP literal without brackets.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrackerUrl {
    /// http, https or udp.
    pub scheme: Scheme,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port, explicit or the scheme's default.
    pub port: u16,
    /// Path and query, starting with `/`; no fragment.
    pub path: String,
}

fn is_safe(s: &str) -> bool {
    // Anything at or below space, or DEL, could split the request line or inject headers.
    s.bytes().all(|b| b > b' ' && b != 0x7f)
}

impl TrackerUrl {
    /// Parses an announce URL from a torrent or a redirect.
    pub fn parse(s: &str) -> Result<TrackerUrl, TrackerError> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TrackerError::InvalidUrl(format!("{s:?} has no scheme")))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "udp" => Scheme::Udp,
            other => return Err(TrackerError::UnsupportedScheme(other.to_string())),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(auth_end);
        // Credentials in the URL are not sent anywhere; only the host part matters.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| TrackerError::InvalidUrl(format!("{s:?}: unclosed '['")))?;
            if h.parse::<core::net::Ipv6Addr>().is_err() {
                return Err(TrackerError::InvalidUrl(format!("{s:?}: bad IPv6 address")));
            }
            match after {
                "" => (h, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => return Err(TrackerError::InvalidUrl(format!("{s:?}: junk after ']'"))),
                },
            }
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        // A ':' in a host is only valid inside brackets (an IPv6 literal); unbracketed, the URL
        // could not be printed back in a form that parses to the same host and port.
        let colon_outside_brackets = !authority.starts_with('[') && host.contains(':');
        if host.is_empty()
            || !is_safe(host)
            || host.contains(['[', ']', '@'])
            || colon_outside_brackets
        {
            return Err(TrackerError::InvalidUrl(format!("{s:?}: bad host")));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| TrackerError::InvalidUrl(format!("{s:?}: bad port")))?,
            None => scheme
                .default_port()
                .ok_or_else(|| TrackerError::InvalidUrl(format!("{s:?}: udp needs a port")))?,
        };
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        if !is_safe(&path) {
            return Err(TrackerError::InvalidUrl(format!(
                "{s:?}: spaces or control characters in path"
            )));
        }
        Ok(TrackerUrl {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// The value of the HTTP `Host` header: the port is omitted when it is the default.
    pub fn host_header(&self) -> String {
        let host = self.bracketed_host();
        if Some(self.port) == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn bracketed_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    /// The scrape URL by the BEP 48 rule: the last path part must start with `announce`, which
    /// becomes `scrape`; anything else means the tracker has no scrape.
    pub fn scrape_url(&self) -> Result<TrackerUrl, TrackerError> {
        if self.scheme == Scheme::Udp {
            return Ok(self.clone());
        }
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        let slash = path.rfind('/').unwrap_or(0);
        let (dir, last) = path.split_at(slash + 1);
        let tail = last
            .strip_prefix("announce")
            .ok_or(TrackerError::ScrapeUnsupported)?;
        let mut new_path = format!("{dir}scrape{tail}");
        if let Some(q) = query {
            new_path.push('?');
            new_path.push_str(q);
        }
        Ok(TrackerUrl {
            path: new_path,
            ..self.clone()
        })
    }

    /// Resolves a redirect `Location` (absolute, scheme-relative, absolute-path or relative).
    pub fn join(&self, location: &str) -> Result<TrackerUrl, TrackerError> {
        let location = location.trim();
        if location.contains("://") {
            return TrackerUrl::parse(location);
        }
        if let Some(rest) = location.strip_prefix("//") {
            return TrackerUrl::parse(&format!("{}://{rest}", self.scheme.as_str()));
        }
        let path = if location.starts_with('/') {
            location.to_string()
        } else {
            let base = self.path.split('?').next().unwrap_or("/");
            let dir = &base[..base.rfind('/').map_or(0, |i| i + 1)];
            format!("{dir}{location}")
        };
        let base = format!(
            "{}://{}:{}",
            self.scheme.as_str(),
            self.bracketed_host(),
            self.port
        );
        TrackerUrl::parse(&format!("{base}{path}"))
    }
}

/// Canonical form (always with the port), used to detect redirect loops.
impl fmt::Display for TrackerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme.as_str(),
            self.bracketed_host(),
            self.port,
            self.path
        )
    }
}

/// Appends `bytes` percent-encoded for a query string: unreserved characters stay, all else is `%XX`.
pub fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> TrackerUrl {
        TrackerUrl::parse(s).unwrap()
    }

    #[test]
    fn parses_schemes_ports_and_paths() {
        let u = url("http://Tracker.Example:6969/announce?passkey=abc");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.path.as_str()),
            (
                Scheme::Http,
                "tracker.example",
                6969,
                "/announce?passkey=abc"
            )
        );
        assert_eq!(url("https://t.example/a").port, 443);
        assert_eq!(url("http://t.example").path, "/");
        assert_eq!(url("http://t.example?x=1").path, "/?x=1");
        let v6 = url("udp://[::1]:1337/announce");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1337));
        assert_eq!(v6.to_string(), "udp://[::1]:1337/announce");
        assert_eq!(
            url("http://user:pw@h:81/x#frag").to_string(),
            "http://h:81/x"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "tracker.example/announce",
            "udp://t.example/announce",
            "http://:80/",
            "http://h:99999/",
            "http://h:0/",
            "http://h/a b",
            "http://h/a\r\nX-Evil: 1",
            "http://[::1/",
            "http://[zz]:80/",
            // Found by fuzzing: would print as `udp://[u.:x]:69/`, which does not parse.
            "udp://u.:x:69/",
            "http://::1:80/",
        ] {
            assert!(
                matches!(TrackerUrl::parse(bad), Err(TrackerError::InvalidUrl(_))),
                "{bad}"
            );
        }
        assert_eq!(
            TrackerUrl::parse("wss://t.example/announce"),
            Err(TrackerError::UnsupportedScheme("wss".into()))
        );
    }

    #[test]
    fn host_header_omits_default_port() {
        assert_eq!(url("http://h/a").host_header(), "h");
        assert_eq!(url("http://h:8080/a").host_header(), "h:8080");
        assert_eq!(url("https://[::1]:443/a").host_header(), "[::1]");
        assert_eq!(url("https://[::1]:444/a").host_header(), "[::1]:444");
    }

    #[test]
    fn scrape_rule() {
        let s = |a: &str| url(a).scrape_url().map(|u| u.path);
        assert_eq!(s("http://h/announce"), Ok("/scrape".into()));
        assert_eq!(
            s("http://h/x/announce.php?k=1"),
            Ok("/x/scrape.php?k=1".into())
        );
        assert_eq!(
            s("http://h/announce?info=announce"),
            Ok("/scrape?info=announce".into())
        );
        assert_eq!(
            s("http://h/a/announce/x"),
            Err(TrackerError::ScrapeUnsupported)
        );
        assert_eq!(
            s("http://h/x/annonce"),
            Err(TrackerError::ScrapeUnsupported)
        );
    }

    #[test]
    fn join_resolves_locations() {
        let base = url("http://h:81/dir/announce?a=1");
        assert_eq!(
            base.join("https://o/x").unwrap().to_string(),
            "https://o:443/x"
        );
        assert_eq!(base.join("//o/x").unwrap().to_string(), "http://o:80/x");
        assert_eq!(
            base.join("/y?b=2").unwrap().to_string(),
            "http://h:81/y?b=2"
        );
        assert_eq!(base.join("z").unwrap().to_string(), "http://h:81/dir/z");
    }

    #[test]
    fn percent_encodes_raw_bytes() {
        let mut s = String::new();
        percent_encode(
            &[
                0x00, b'a', b'Z', b'9', b'-', b'.', b'_', b'~', b' ', 0xff, b'%',
            ],
            &mut s,
        );
        assert_eq!(s, "%00aZ9-._~%20%FF%25");
    }
}
