//! HTTP pieces shared by the end-to-end tests (`tests/`) and `cargo xtask
//! dashboards` (`xtask/`): a free port, a GET on 127.0.0.1 (the metrics
//! endpoint, Prometheus' API), and the request loop of a stand-in
//! OTLP/HTTP receiver. Standard library only: xtask builds it before
//! `cargo xtask setup` has installed anything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

/// A port on 127.0.0.1 that nobody listens on now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// `GET path` on 127.0.0.1:`port` (HTTP/1.0, so the answer ends with the
/// connection), giving up after `timeout` without an answer: (status,
/// body).
pub fn get(port: u16, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let r = get_with(port, path, &[], timeout)?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// The answer of [`get_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body as sent (dechunked).
    pub body: Vec<u8>,
}

/// [`get`] with extra request headers (`("Accept", "...")`) and the body
/// as bytes (a binary exposition format).
pub fn get_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(timeout))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no end of the HTTP header"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| invalid("no HTTP status"))?;
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    Ok(Answer {
        status,
        content_type: header("content-type"),
        body: if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(p) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..p]);
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        let rest = &body[p + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest[n..].strip_prefix(b"\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Serves the HTTP/1.1 requests of one connection (bodies framed by
/// Content-Length, kept alive) until the peer closes it or is silent for
/// 30 s: `answer(head, body)` gets each request's head (lower case) and
/// body and returns the body of its `200 OK` (`application/x-protobuf`:
/// what an OTLP/HTTP receiver answers).
pub fn serve(mut conn: TcpStream, mut answer: impl FnMut(&str, &[u8]) -> Vec<u8>) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let reply = answer(&head, &buf[head_end..head_end + len]);
        buf.drain(..head_end + len);
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if conn.write_all(head.as_bytes()).is_err() || conn.write_all(&reply).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serve_answers_each_request_of_a_kept_alive_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let mut got = Vec::new();
            serve(c, |head, body| {
                got.push((head.lines().next().unwrap_or("").to_string(), body.to_vec()));
                body.iter().rev().copied().collect()
            });
            got
        });
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        for body in [&b"abc"[..], b"", b"0123456789"] {
            write!(
                c,
                "POST /v1/traces HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            c.write_all(body).unwrap();
        }
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).unwrap();
        assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 3, "{answer}");
        assert!(
            answer.ends_with("content-length: 10\r\n\r\n9876543210"),
            "{answer}"
        );
        let got = server.join().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            ("post /v1/traces http/1.1".to_string(), b"abc".to_vec())
        );
        assert_eq!(got[2].1, b"0123456789");
    }

    #[test]
    fn get_reads_status_and_body_also_when_chunked() {
        for (raw, body) in [
            ("HTTP/1.0 404 Not Found\r\n\r\nnope", "nope"),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                "abcde",
            ),
        ] {
            let (port, t) = answer_once(raw.as_bytes().to_vec());
            let (code, got) = get(port, "/x?q=1", Duration::from_secs(5)).unwrap();
            assert!(t.join().unwrap().starts_with(b"GET /x?q=1 HTTP/1.0\r\n"));
            assert_eq!(code, if body == "nope" { 404 } else { 200 });
            assert_eq!(got, body);
        }
        assert_eq!(urlencode("up{a=\"b\"}"), "up%7Ba%3D%22b%22%7D");
    }

    /// A server on a free port that reads one request, answers `raw` and
    /// hands back the request.
    fn answer_once(raw: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 256];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                assert!(n > 0, "the request ended early");
                req.extend_from_slice(&b[..n]);
            }
            c.write_all(&raw).unwrap();
            req
        });
        (port, t)
    }

    #[test]
    fn get_with_sends_headers_and_keeps_a_binary_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/x\r\n\r\n\xff\x00\r\n\x80";
        let (port, t) = answer_once(raw.to_vec());
        let a = get_with(
            port,
            "/m",
            &[("Accept", "application/x")],
            Duration::from_secs(5),
        )
        .unwrap();
        let req = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(req.contains("\r\nAccept: application/x\r\n"), "{req}");
        assert_eq!(a.status, 200);
        assert_eq!(a.content_type.as_deref(), Some("application/x"));
        assert_eq!(a.body, b"\xff\x00\r\n\x80");
    }
}
