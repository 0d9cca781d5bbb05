//! `dpctl change MAILBOX FOLDER...`: publishes a change through the watcher's ingest API.

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub async fn send(
    ingest_url: &str,
    token: &str,
    mailbox: &str,
    folders: &[String],
    kind: &str,
) -> Result<()> {
    let body =
        serde_json::json!({"mailbox": mailbox, "folders": folders, "kind": kind}).to_string();
    let Some(rest) = ingest_url.strip_prefix("http://") else {
        bail!("--ingest-url must be http://host:port (put TLS in front of the watcher, not here)");
    };
    let host = rest.trim_end_matches('/');
    let mut stream = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to the ingest API at {host}"))?;
    let request = format!(
        "POST /v1/changes HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or_default();
    let answer = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).trim();
    if status_line.split_whitespace().nth(1) == Some("202") {
        println!("accepted: {answer}");
        Ok(())
    } else {
        bail!("the ingest API answered {status_line}: {answer}")
    }
}
