//! `dpctl change MAILBOX FOLDER...`: publishes a change through the watcher's ingest API.

use anyhow::{bail, Result};

use crate::http::exchange;

pub async fn send(
    ingest_url: &str,
    token: &str,
    mailbox: &str,
    folders: &[String],
    kind: &str,
) -> Result<()> {
    let body =
        serde_json::json!({"mailbox": mailbox, "folders": folders, "kind": kind}).to_string();
    let headers = format!("Authorization: Bearer {token}\r\nContent-Type: application/json\r\n");
    let url = ingest_url.trim_end_matches('/');
    let (status, answer) = exchange(url, "POST", "/v1/changes", &headers, &body).await?;
    if status == 202 {
        println!("accepted: {answer}");
        Ok(())
    } else {
        bail!("the ingest API answered {status}: {answer}")
    }
}

/// `dpctl health URL`: succeeds when URL answers 200 (the container health check).
pub async fn health(url: &str) -> Result<()> {
    let (status, answer) = exchange(url, "GET", "", "", "").await?;
    if status == 200 {
        Ok(())
    } else {
        bail!("{url} answered {status}: {answer}")
    }
}
