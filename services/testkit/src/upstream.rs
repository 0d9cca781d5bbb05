//! A stand-in ActiveSync server for proxy tests: what SOGo or Exchange cannot be made to do on
//! demand (20 MB bodies, gzip, 449/451/503, slowness). It records every request it receives and
//! answers each with what the test's handler says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    /// Whether the body came chunked.
    pub chunked: bool,
    pub body_len: usize,
    pub body_sha256: [u8; 32],
    /// The body itself when it is under 1 MiB.
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Cmd=` of a plain-form query.
    pub fn command(&self) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|pair| pair.strip_prefix("Cmd="))
    }
}

/// How the stand-in answers.
pub enum Body {
    Bytes(Vec<u8>),
    /// Sent chunked, in these pieces.
    Chunked(Vec<Vec<u8>>),
    /// `len` bytes of a repeating pattern (`pattern(len)`), with Content-Length.
    Pattern(usize),
}

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Answer {
    pub fn new(status: u16, body: Vec<u8>) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body: Body::Bytes(body),
            delay: Duration::ZERO,
        }
    }

    pub fn wbxml(body: Vec<u8>) -> Answer {
        Answer::new(200, body).header("Content-Type", "application/vnd.ms-sync.wbxml")
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// A FolderSync answer: Status 1, SyncKey `key`, these folders added as (ServerId, Type), all
/// at the top level, each named by its ServerId.
pub fn folder_sync_answer(key: &str, folders: &[(&str, &str)]) -> Vec<u8> {
    let tree: Vec<(&str, &str, &str, &str)> =
        folders.iter().map(|&(id, ty)| (id, "0", id, ty)).collect();
    folder_sync_tree(key, &tree)
}

/// A FolderSync answer adding these folders as (ServerId, ParentId, DisplayName, Type).
pub fn folder_sync_tree(key: &str, folders: &[(&str, &str, &str, &str)]) -> Vec<u8> {
    use dp_proto::wbxml::{encode, Element};
    let fh = |token, text: &str| Element::with_text(7, token, text);
    let mut changes = Element::new(7, 0x0E).child(fh(0x17, &folders.len().to_string()));
    for (id, parent, name, ty) in folders {
        changes = changes.child(
            Element::new(7, 0x0F)
                .child(fh(0x08, id))
                .child(fh(0x09, parent))
                .child(fh(0x07, name))
                .child(fh(0x0A, ty)),
        );
    }
    let root = Element::new(7, 0x16)
        .child(fh(0x0C, "1"))
        .child(fh(0x12, key))
        .child(changes);
    encode(&root).unwrap_or_default()
}

/// A Sync request for one collection at `key`.
pub fn sync_request(collection: &str, key: &str) -> Vec<u8> {
    use dp_proto::wbxml::{encode, Element};
    let c = Element::new(0, 0x0F)
        .child(Element::with_text(0, 0x0B, key))
        .child(Element::with_text(0, 0x12, collection));
    encode(&Element::new(0, 0x05).child(Element::new(0, 0x1C).child(c))).unwrap_or_default()
}

/// Answers a Sync request by completing every collection it asks for, under key `k2`.
pub fn sync_echo(request: &Received) -> Answer {
    let (sync, _): (dp_proto::sync::Sync, bool) = dp_proto::sync::scan(&request.body);
    let done: Vec<(&str, &str)> = sync
        .collections
        .iter()
        .map(|c| (c.id.as_str(), "k2"))
        .collect();
    Answer::wbxml(sync_answer(&done))
}

/// A Sync answer completing these collections (id, new SyncKey) with Status 1.
pub fn sync_answer(collections: &[(&str, &str)]) -> Vec<u8> {
    use dp_proto::wbxml::{encode, Element};
    let mut list = Element::new(0, 0x1C);
    for (id, key) in collections {
        list = list.child(
            Element::new(0, 0x0F)
                .child(Element::with_text(0, 0x0B, *key))
                .child(Element::with_text(0, 0x12, *id))
                .child(Element::with_text(0, 0x0E, "1")),
        );
    }
    encode(&Element::new(0, 0x05).child(list)).unwrap_or_default()
}

/// The bytes of [`Body::Pattern`]: not all alike, so a misplaced piece shows.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

pub type Handler = dyn Fn(&Received) -> Answer + Send + Sync;

pub struct Upstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Serves on a port of its own until dropped.
    pub async fn start(handler: impl Fn(&Received) -> Answer + Send + Sync + 'static) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds a local port");
        let addr = listener.local_addr().expect("local addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (handler, log) = (handler.clone(), log.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, &*handler, &log).await;
                });
            }
        });
        Upstream {
            addr,
            received,
            task,
        }
    }

    /// The endpoint URL to give the frontend as UPSTREAM_URL.
    pub fn url(&self) -> String {
        format!("http://{}/Microsoft-Server-ActiveSync", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut stream: TcpStream,
    handler: &Handler,
    log: &Mutex<Vec<Received>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut stream, &mut buf).await? else {
            return Ok(());
        };
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(request.clone());
        let answer = handler(&request);
        tokio::time::sleep(answer.delay).await;
        write_answer(&mut stream, answer).await?;
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    buf.reserve(64 * 1024);
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Hashes a body as it arrives, keeping it only while it is small.
#[derive(Default)]
struct Sink {
    hash: Sha256,
    len: usize,
    kept: Vec<u8>,
}

impl Sink {
    fn take(&mut self, bytes: &[u8]) {
        self.hash.update(bytes);
        self.len += bytes.len();
        if self.len <= 1 << 20 {
            self.kept.extend_from_slice(bytes);
        }
    }
}

async fn read_request(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Received>> {
    let (head_len, mut received, length) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = parsed.parse(buf) {
            let target = parsed.path.unwrap_or("/");
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_owned(), value)
                })
                .collect();
            let find = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.clone())
            };
            let length: Option<usize> = find("content-length").and_then(|v| v.parse().ok());
            let chunked = find("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let received = Received {
                method: parsed.method.unwrap_or("").to_owned(),
                query: target.split_once('?').map_or("", |(_, q)| q).to_owned(),
                headers,
                chunked,
                body_len: 0,
                body_sha256: [0; 32],
                body: Vec::new(),
            };
            break (n, received, length);
        }
        if buf.is_empty() {
            buf.reserve(4096);
            if stream.read_buf(buf).await? == 0 {
                return Ok(None);
            }
            continue;
        }
        fill(stream, buf).await?;
    };
    buf.drain(..head_len);
    let mut sink = Sink::default();
    if received.chunked {
        read_chunked(stream, buf, &mut sink).await?;
    } else {
        copy(stream, buf, &mut sink, length.unwrap_or(0)).await?;
    }
    received.body_len = sink.len;
    received.body_sha256 = sink.hash.finalize().into();
    received.body = sink.kept;
    Ok(Some(received))
}

/// Hands the next `left` body bytes to `sink`.
async fn copy(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sink: &mut Sink,
    mut left: usize,
) -> std::io::Result<()> {
    while left > 0 {
        if buf.is_empty() {
            fill(stream, buf).await?;
        }
        let n = left.min(buf.len());
        sink.take(&buf[..n]);
        buf.drain(..n);
        left -= n;
    }
    Ok(())
}

async fn line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<String> {
    loop {
        if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..at]).into_owned();
            buf.drain(..at + 2);
            return Ok(line);
        }
        fill(stream, buf).await?;
    }
}

async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    sink: &mut Sink,
) -> std::io::Result<()> {
    loop {
        let size = line(stream, buf).await?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("bad chunk size"))?;
        if size == 0 {
            while !line(stream, buf).await?.is_empty() {}
            return Ok(());
        }
        copy(stream, buf, sink, size).await?;
        line(stream, buf).await?;
    }
}

async fn write_answer(stream: &mut TcpStream, answer: Answer) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Stand-in\r\n", answer.status);
    for (name, value) in &answer.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match &answer.body {
        Body::Bytes(bytes) => head.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len())),
        Body::Pattern(len) => head.push_str(&format!("Content-Length: {len}\r\n\r\n")),
        Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
    }
    stream.write_all(head.as_bytes()).await?;
    match answer.body {
        Body::Bytes(bytes) => stream.write_all(&bytes).await?,
        Body::Pattern(len) => {
            let all = pattern(len);
            for piece in all.chunks(64 * 1024) {
                stream.write_all(piece).await?;
            }
        }
        Body::Chunked(pieces) => {
            for piece in pieces {
                stream
                    .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
                    .await?;
                stream.write_all(&piece).await?;
                stream.write_all(b"\r\n").await?;
            }
            stream.write_all(b"0\r\n\r\n").await?;
        }
    }
    stream.flush().await
}
