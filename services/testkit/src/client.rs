//! A device, speaking EAS over a real keep-alive connection, and small HTTP helpers.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use dp_proto::ping::{FolderClass, PingFolder, PingRequest, PingResponse};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as a Ping response; fails the test if it is not one.
    pub fn ping(&self) -> PingResponse {
        assert_eq!(self.status, 200, "HTTP {}: {}", self.status, self.text());
        PingResponse::parse(&self.body).expect("the body is a Ping response")
    }
}

/// Reads one response; `buf` keeps bytes past it.
pub async fn read_response<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<HttpResponse> {
    loop {
        let mut headers = [httparse_header(); 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head)) = parsed.parse(buf) {
            let status = parsed.code.unwrap_or(0);
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            buf.drain(..head);
            let chunked = headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
            });
            let body = if chunked {
                read_chunked(stream, buf).await?
            } else {
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < length {
                    if stream.read_buf(buf).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                buf.drain(..length).collect()
            };
            return Ok(HttpResponse {
                status,
                headers,
                body,
            });
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A chunked body, de-chunked.
async fn read_chunked<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let size = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..at]).into_owned();
                buf.drain(..at + 2);
                break usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
            }
            if stream.read_buf(buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        while buf.len() < size + 2 {
            if stream.read_buf(buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
        if size == 0 {
            // No trailers are sent by the frontend: the last chunk ends the body.
            return Ok(body);
        }
    }
}

fn httparse_header() -> httparse::Header<'static> {
    httparse::EMPTY_HEADER
}

/// Sends raw bytes on a new connection and reads one response.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf).await
}

pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<HttpResponse> {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

pub async fn post_json(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> std::io::Result<HttpResponse> {
    let body = body.to_string();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, request.as_bytes()).await
}

/// A full Ping body for `folders` (all Email) with `heartbeat` seconds.
pub fn ping_body(heartbeat: u32, folders: &[&str]) -> PingRequest {
    PingRequest {
        heartbeat: Some(heartbeat),
        folders: Some(
            folders
                .iter()
                .map(|id| PingFolder {
                    id: (*id).to_owned(),
                    class: FolderClass::Email,
                })
                .collect(),
        ),
    }
}

/// A connection of either kind.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A phone: one mailbox, one DeviceId, one keep-alive connection to whichever pod it talks to.
pub struct Device {
    /// Speak TLS (to `localhost`) with this connector.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Authenticate with this bearer token instead of Basic credentials.
    pub bearer: Option<String>,
    pub addr: SocketAddr,
    pub user: String,
    pub password: String,
    pub device_id: String,
    /// Send the base64 query form instead of the plain one.
    pub base64_query: bool,
    /// Connect from this local address (port chosen by the kernel): many source addresses
    /// give a load test more than one address pair's ephemeral ports.
    pub source: Option<std::net::IpAddr>,
    stream: Option<Box<dyn Stream>>,
    buf: Vec<u8>,
}

impl Device {
    pub fn new(addr: SocketAddr, user: &str, password: &str, device_id: &str) -> Device {
        Device {
            addr,
            user: user.to_owned(),
            password: password.to_owned(),
            device_id: device_id.to_owned(),
            base64_query: false,
            source: None,
            tls: None,
            bearer: None,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Talks to another pod from now on (as after a DNS or load-balancer change).
    pub fn move_to(&mut self, addr: SocketAddr) {
        self.addr = addr;
        self.hang_up();
    }

    /// Closes the connection, everything on it read: the next request opens another.
    pub fn hang_up(&mut self) {
        self.stream = None;
        self.buf.clear();
    }

    fn query(&self, command: dp_proto::query::Command) -> String {
        if self.base64_query {
            let request = dp_proto::query::EasRequest {
                form: dp_proto::query::QueryForm::Base64,
                command,
                user: None,
                device_id: self.device_id.clone(),
                device_type: "SmartPhone".into(),
                version: Some(dp_proto::query::ProtocolVersion::V14_1),
                locale: Some(0x0409),
                policy_key: None,
                params: vec![],
            };
            request.to_base64().expect("encodes")
        } else {
            format!(
                "Cmd={}&User={}&DeviceId={}&DeviceType=SmartPhone",
                command.name(),
                self.user,
                self.device_id
            )
        }
    }

    /// The bytes of a Ping request with `body` (`None`: an empty body).
    pub fn ping_request(&self, body: Option<&PingRequest>) -> Vec<u8> {
        let body = body.map_or(Vec::new(), |b| b.encode().expect("encodes"));
        self.ping_request_with(&body)
    }

    /// The bytes of a Ping request carrying `body` as it is, valid or not.
    pub fn ping_request_with(&self, body: &[u8]) -> Vec<u8> {
        self.request(dp_proto::query::Command::Ping, body, "")
    }

    /// Sends any command with `body` (and `extra` header lines, each ending in CRLF).
    pub async fn command(
        &mut self,
        command: dp_proto::query::Command,
        body: &[u8],
        extra: &str,
    ) -> std::io::Result<HttpResponse> {
        let request = self.request(command, body, extra);
        self.send(&request).await
    }

    /// The bytes of a request for `command` carrying `body`, with `extra` header lines.
    pub fn request(&self, command: dp_proto::query::Command, body: &[u8], extra: &str) -> Vec<u8> {
        let authorization = match &self.bearer {
            Some(token) => format!("Bearer {token}"),
            None => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", self.user, self.password))
            ),
        };
        let mut request = format!(
            "POST /Microsoft-Server-ActiveSync?{} HTTP/1.1\r\nHost: test\r\n\
             Authorization: {authorization}\r\nMS-ASProtocolVersion: 14.1\r\n\
             User-Agent: dp-testkit\r\n{extra}{}Content-Length: {}\r\n\r\n",
            self.query(command),
            if body.is_empty() {
                ""
            } else {
                "Content-Type: application/vnd.ms-sync.wbxml\r\n"
            },
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    }

    /// Sends a Ping and waits for its answer (reconnecting first if the connection is gone).
    pub async fn ping(&mut self, body: Option<&PingRequest>) -> std::io::Result<HttpResponse> {
        let request = self.ping_request(body);
        self.send(&request).await
    }

    /// Sends any request on the device's connection and reads the answer.
    pub async fn send(&mut self, request: &[u8]) -> std::io::Result<HttpResponse> {
        if self.stream.is_none() {
            let tcp = match self.source {
                None => TcpStream::connect(self.addr).await?,
                Some(ip) => {
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(ip, 0))?;
                    socket.connect(self.addr).await?
                }
            };
            self.stream = Some(match &self.tls {
                None => Box::new(tcp),
                Some(connector) => {
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                    Box::new(connector.connect(name, tcp).await?)
                }
            });
            self.buf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(std::io::ErrorKind::NotConnected.into());
        };
        let result = async {
            stream.write_all(request).await?;
            read_response(stream, &mut self.buf).await
        }
        .await;
        match &result {
            Ok(response)
                if response
                    .header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.stream = None;
            }
            Err(_) => self.stream = None,
            Ok(_) => {}
        }
        result
    }

    /// Like [`ping`](Self::ping), failing the test if no answer comes within `within`.
    pub async fn ping_within(
        &mut self,
        body: Option<&PingRequest>,
        within: Duration,
    ) -> HttpResponse {
        tokio::time::timeout(within, self.ping(body))
            .await
            .unwrap_or_else(|_| panic!("no answer to {}'s Ping within {within:?}", self.device_id))
            .expect("the Ping is answered")
    }
}
