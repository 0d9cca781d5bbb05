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

/// The parts of a request the frontend uses.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub protocol_version: Option<String>,
    pub user_agent: Option<String>,
    pub keep_alive: bool,
    pub body: Vec<u8>,
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
    #[error("chunked request bodies are not accepted; send Content-Length")]
    Chunked,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request. `buf` carries bytes read past the previous request (pipelining) and is
/// left holding bytes past this one.
pub async fn read<S: AsyncRead + Unpin>(
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
    loop {
        if let Some((head_len, mut request, content_length)) = parse_head(buf, limits)? {
            buf.drain(..head_len);
            while buf.len() < content_length {
                if read_more(stream, buf).await? == 0 {
                    return Err(ReadError::Malformed(
                        "body ends before Content-Length".into(),
                    ));
                }
            }
            request.body = buf.drain(..content_length).collect();
            if buf.is_empty() {
                // Release the read buffer: a parked connection should hold no buffer at all.
                *buf = Vec::new();
            }
            return Ok(request);
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

/// Parses a complete head, or says more bytes are needed (`None`).
pub fn parse_head(
    buf: &[u8],
    limits: SizeLimits,
) -> Result<Option<(usize, Request, usize)>, ReadError> {
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
        keep_alive: parsed.version == Some(1),
        body: Vec::new(),
    };
    let mut content_length: Option<usize> = None;
    for header in parsed.headers.iter() {
        let value = || {
            std::str::from_utf8(header.value)
                .map(|v| v.trim().to_owned())
                .map_err(|_| ReadError::Malformed(format!("{} is not UTF-8", header.name)))
        };
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value()?
                .parse()
                .map_err(|_| ReadError::Malformed("Content-Length is not a number".into()))?;
            if content_length.is_some_and(|previous| previous != length) {
                return Err(ReadError::Malformed(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Chunked);
        } else if name.eq_ignore_ascii_case("authorization") {
            request.authorization = Some(value()?);
        } else if name.eq_ignore_ascii_case("ms-asprotocolversion") {
            request.protocol_version = Some(value()?);
        } else if name.eq_ignore_ascii_case("user-agent") {
            request.user_agent = Some(value()?);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value()?.to_ascii_lowercase();
            if v.contains("close") {
                request.keep_alive = false;
            } else if v.contains("keep-alive") {
                request.keep_alive = true;
            }
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.body {
        return Err(ReadError::BodyTooLarge(limits.body));
    }
    Ok(Some((head_len, request, content_length)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_ping_head() {
        let raw = b"POST /Microsoft-Server-ActiveSync?Cmd=Ping&User=a HTTP/1.1\r\nHost: x\r\n\
            Authorization: Basic YTpi\r\nMS-ASProtocolVersion: 14.1\r\nContent-Length: 3\r\n\r\nabc";
        let (len, request, body) = parse_head(raw, SizeLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!((len, body), (raw.len() - 3, 3));
        assert_eq!(request.method, Method::Post);
        assert_eq!(request.path, "/Microsoft-Server-ActiveSync");
        assert_eq!(request.query, "Cmd=Ping&User=a");
        assert_eq!(request.protocol_version.as_deref(), Some("14.1"));
        assert!(request.keep_alive);
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert!(
            parse_head(b"POST / HTTP/1.1\r\nContent-Len", SizeLimits::default())
                .expect("partial")
                .is_none()
        );
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            parse_head(chunked, SizeLimits::default()),
            Err(ReadError::Chunked)
        ));
        let big = b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n";
        assert!(matches!(
            parse_head(big, SizeLimits::default()),
            Err(ReadError::BodyTooLarge(_))
        ));
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
