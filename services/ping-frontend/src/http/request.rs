//! Reading one request (head and body) from a connection.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Size bounds on one request.
#[derive(Clone, Copy, Debug)]
pub struct SizeLimits {
    pub head: usize,
    pub body: usize,
}

impl Default for SizeLimits {
    /// 16 KiB of head, 64 KiB of body (a Ping body is well under 1 KiB).
    fn default() -> Self {
        SizeLimits {
            head: 16 * 1024,
            body: 64 * 1024,
        }
    }
}
const MAX_HEADERS: usize = 48;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Post,
    Options,
    Other,
}

/// How the request's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (0 when absent).
    Length(u64),
    /// `Transfer-Encoding: chunked`: only pass-through streams it.
    Chunked,
}

/// The parts of a request the frontend uses. The head is read and routed before any body byte:
/// a Ping's body is then read whole (it is small and capped), a pass-through body is streamed.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub protocol_version: Option<String>,
    pub user_agent: Option<String>,
    /// `X-Forwarded-For`, every such header joined with commas; believed only from
    /// `TRUSTED_PROXIES`.
    pub forwarded_for: Option<String>,
    pub keep_alive: bool,
    pub framing: Framing,
    /// `Expect: 100-continue`: the client waits for a go-ahead before its body.
    pub expect_continue: bool,
    /// The head as received, for forwarding its headers.
    pub head: Vec<u8>,
    /// Filled by [`read_body`].
    pub body: Vec<u8>,
    /// When the head had arrived, in [`clock_ms`]: a Ping's heartbeat counts from here, not
    /// from after its authentication and body, because the device's own clock started before
    /// either. Four bytes that fit the struct's padding: an `Instant` made it 16 bytes larger,
    /// which cost each parked connection about 130 bytes (the task's allocation grows by whole
    /// cache lines; measured 2,850 -> 3,000 B per parked plaintext Ping).
    pub received_ms: u32,
}

/// Milliseconds since the process first asked, wrapping every 49 days: only the time between a
/// request's arrival and its handling, seconds at most, is ever taken from it.
pub fn clock_ms() -> u32 {
    static START: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    // Truncating is the wrap.
    START
        .get_or_init(tokio::time::Instant::now)
        .elapsed()
        .as_millis() as u32
}

impl Request {
    /// How long ago the head arrived.
    pub fn age(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(clock_ms().wrapping_sub(self.received_ms)))
    }

    /// The method and every header of the head, as received (name, value).
    pub fn parts(&self) -> (&str, Vec<(&str, &[u8])>) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        // The head parsed once already; it parses again the same.
        if parsed.parse(&self.head).is_err() {
            return ("POST", Vec::new());
        }
        let method = parsed.method.unwrap_or("POST");
        (
            method,
            parsed.headers.iter().map(|h| (h.name, h.value)).collect(),
        )
    }
}

/// Why no request could be read; each maps to one answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client closed the connection between requests: not an error.
    #[error("connection closed")]
    Closed,
    #[error("idle connection timed out")]
    Idle,
    #[error("request took longer than the header timeout")]
    Slow,
    #[error("request head over {0} bytes")]
    HeadTooLarge(usize),
    #[error("request body over {0} bytes")]
    BodyTooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("chunked request bodies are not accepted here; send Content-Length")]
    Chunked,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// The HTTP status that answers it, and the limit it counts against, if any; `None` when
    /// the connection is simply over.
    pub fn answer(&self) -> Option<(u16, Option<&'static str>)> {
        Some(match self {
            ReadError::Closed | ReadError::Idle | ReadError::Io(_) => return None,
            ReadError::Slow => (408, Some("header_time")),
            ReadError::HeadTooLarge(_) => (431, Some("head_size")),
            ReadError::BodyTooLarge(_) => (413, Some("body_size")),
            ReadError::Chunked => (411, None),
            ReadError::Malformed(_) => (400, None),
        })
    }
}

/// Reads one request head. `buf` carries bytes read past the previous request (pipelining) and
/// is left holding the bytes past the head: the start of the body, or the next request.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    idle: Duration,
    header_timeout: Duration,
    limits: SizeLimits,
) -> Result<Request, ReadError> {
    if buf.is_empty() {
        // Between requests a keep-alive connection may idle; only once a request starts does
        // the (shorter) header timeout run.
        match tokio::time::timeout(idle, read_more(stream, buf)).await {
            Err(_) => return Err(ReadError::Idle),
            Ok(Ok(0)) => return Err(ReadError::Closed),
            Ok(result) => {
                result?;
            }
        }
    }
    tokio::time::timeout(header_timeout, read_rest(stream, buf, limits))
        .await
        .unwrap_or(Err(ReadError::Slow))
}

/// Reads a whole body of at most `limit` bytes into `request.body` (a Ping's).
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    request: &mut Request,
    limit: usize,
    timeout: Duration,
) -> Result<(), ReadError> {
    request.body = body(stream, buf, request.framing, limit, timeout).await?;
    Ok(())
}

/// Reads a whole body of at most `limit` bytes framed by `framing`.
pub async fn body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    framing: Framing,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    let length = match framing {
        Framing::Chunked => return Err(ReadError::Chunked),
        Framing::Length(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n <= limit)
            .ok_or(ReadError::BodyTooLarge(limit))?,
    };
    let read = async {
        while buf.len() < length {
            if read_more(stream, buf).await? == 0 {
                return Err(ReadError::Malformed(
                    "body ends before Content-Length".into(),
                ));
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ReadError::Slow))?;
    let body = buf.drain(..length).collect();
    if buf.is_empty() {
        // Release the read buffer: a parked connection should hold no buffer at all.
        *buf = Vec::new();
    }
    Ok(body)
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    buf.reserve(1024);
    stream.read_buf(buf).await
}

async fn read_rest<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: SizeLimits,
) -> Result<Request, ReadError> {
    // The head is parsed again only when a line has ended since the last try: a head trickled
    // in one byte at a time costs a parse per line (at most MAX_HEADERS + 1), not per byte.
    let mut scanned = 0;
    loop {
        let new_line = buf[scanned.min(buf.len())..].contains(&b'\n');
        scanned = buf.len();
        if new_line {
            if let Some((head_len, mut request)) = parse_head(buf, limits)? {
                let rest = buf.split_off(head_len);
                request.head = std::mem::replace(buf, rest);
                return Ok(request);
            }
        }
        if buf.len() >= limits.head {
            return Err(ReadError::HeadTooLarge(limits.head));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(ReadError::Malformed(
                "connection closed inside the request head".into(),
            ));
        }
    }
}

/// `Content-Length` as RFC 9110 has it: digits only (no sign, no spaces inside).
fn content_length(value: &str) -> Result<u64, ReadError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ReadError::Malformed(
            "Content-Length is not a number".into(),
        ));
    }
    value
        .parse()
        .map_err(|_| ReadError::Malformed("Content-Length is too large".into()))
}

/// Parses a complete head, or says more bytes are needed (`None`).
pub fn parse_head(buf: &[u8], limits: SizeLimits) -> Result<Option<(usize, Request)>, ReadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ReadError::Malformed(format!(
                "more than {MAX_HEADERS} headers"
            )))
        }
        Err(e) => return Err(ReadError::Malformed(e.to_string())),
    };
    if head_len > limits.head {
        return Err(ReadError::HeadTooLarge(limits.head));
    }
    let method = match parsed.method {
        Some("POST") => Method::Post,
        Some("OPTIONS") => Method::Options,
        _ => Method::Other,
    };
    let target = parsed.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut request = Request {
        method,
        path: path.to_owned(),
        query: query.to_owned(),
        authorization: None,
        protocol_version: None,
        user_agent: None,
        forwarded_for: None,
        keep_alive: parsed.version == Some(1),
        framing: Framing::Length(0),
        expect_continue: false,
        head: Vec::new(),
        body: Vec::new(),
        received_ms: clock_ms(),
    };
    request.framing = read_headers(&mut request, parsed.headers)?;
    Ok(Some((head_len, request)))
}

/// Takes what routing and the Ping need from the headers into `request`; returns the body's
/// framing.
fn read_headers(request: &mut Request, headers: &[httparse::Header]) -> Result<Framing, ReadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in headers {
        let value = || {
            std::str::from_utf8(header.value)
                .map(|v| v.trim().to_owned())
                .map_err(|_| ReadError::Malformed(format!("{} is not UTF-8", header.name)))
        };
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(&value()?)?;
            if length.is_some_and(|previous| previous != n) {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value()?.eq_ignore_ascii_case("chunked") {
                return Err(ReadError::Malformed(
                    "Transfer-Encoding other than chunked".into(),
                ));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value()?);
        } else if name.eq_ignore_ascii_case("ms-asprotocolversion") {
            request.protocol_version = Some(value()?);
        } else if name.eq_ignore_ascii_case("user-agent") {
            request.user_agent = Some(value()?);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            let hop = value()?;
            request.forwarded_for = Some(match request.forwarded_for.take() {
                Some(before) => format!("{before}, {hop}"),
                None => hop,
            });
        } else if name.eq_ignore_ascii_case("expect") {
            request.expect_continue = value()?.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value()?.to_ascii_lowercase();
            if v.contains("close") {
                request.keep_alive = false;
            } else if v.contains("keep-alive") {
                request.keep_alive = true;
            }
        }
    }
    match (chunked, length) {
        // Both framings at once is how requests are smuggled past proxies.
        (true, Some(_)) => Err(ReadError::Malformed(
            "both Content-Length and Transfer-Encoding".into(),
        )),
        (true, None) => Ok(Framing::Chunked),
        (false, n) => Ok(Framing::Length(n.unwrap_or(0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A fresh process's clock is near zero, so the arrival 1.5 s back wraps below it.
    #[test]
    fn a_requests_age_survives_the_clock_wrapping() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        let (_, mut request) = parse_head(raw, SizeLimits::default())
            .expect("valid")
            .expect("complete");
        assert!(request.age() < std::time::Duration::from_secs(1));
        for back in [1_500, u32::MAX / 2] {
            request.received_ms = clock_ms().wrapping_sub(back);
            let age = request.age().as_millis();
            assert!(
                (u128::from(back)..u128::from(back) + 1_000).contains(&age),
                "{back} ms back read as {age} ms"
            );
        }
    }

    #[test]
    fn parses_a_ping_head() {
        let raw = b"POST /Microsoft-Server-ActiveSync?Cmd=Ping&User=a HTTP/1.1\r\nHost: x\r\n\
            Authorization: Basic YTpi\r\nMS-ASProtocolVersion: 14.1\r\nContent-Length: 3\r\n\r\nabc";
        let (len, request) = parse_head(raw, SizeLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(len, raw.len() - 3);
        assert_eq!(request.framing, Framing::Length(3));
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/Microsoft-Server-ActiveSync");
        assert_eq!(request.query, "Cmd=Ping&User=a");
        assert_eq!(request.protocol_version.as_deref(), Some("14.1"));
        assert!(request.keep_alive);
    }

    #[tokio::test]
    async fn a_head_trickled_byte_by_byte_is_read_once_complete() {
        let raw = b"POST /x?Cmd=Ping HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nNEXT";
        for split in [1, 2, 3, 7] {
            let (mut client, mut server) = tokio::io::duplex(64);
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for piece in raw.chunks(split) {
                    client.write_all(piece).await.expect("writes");
                }
                client
            });
            let mut buf = Vec::new();
            let request = read_rest(&mut server, &mut buf, SizeLimits::default())
                .await
                .expect("a request");
            assert_eq!(request.query, "Cmd=Ping");
            assert!(
                b"NEXT".starts_with(&buf),
                "only what follows the head is left"
            );
            drop(writer.await);
        }
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Len", SizeLimits::default())
                .expect("partial")
                .is_none()
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (_, request) = parse_head(chunked, SizeLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(request.framing, Framing::Chunked);
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse_head(bad, SizeLimits::default()),
                    Err(ReadError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let conflict = b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(
            parse_head(conflict, SizeLimits::default()),
            Err(ReadError::Malformed(_))
        ));
        assert!(matches!(
            parse_head(b"\x01\x02 / HTTP/1.1\r\n\r\n", SizeLimits::default()),
            Err(ReadError::Malformed(_))
        ));
    }
}
