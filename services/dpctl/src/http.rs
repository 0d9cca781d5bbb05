//! The one HTTP/1.1 exchange dpctl needs: a request on a fresh connection, the status and body
//! back. Plain http:// only (put TLS in front of the admin and ingest ports, not here).

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `method path` to `url`'s host with `headers` and `body`; returns status and body.
pub async fn exchange(
    url: &str,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("{url}: only http://host:port is supported");
    };
    let (host, base) = rest.split_once('/').unwrap_or((rest, ""));
    let path = if path.is_empty() {
        format!("/{base}")
    } else {
        path.to_owned()
    };
    let mut stream = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("{host} did not answer HTTP: {status_line:?}"))?;
    let answer = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    Ok((status, answer.to_owned()))
}
