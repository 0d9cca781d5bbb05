//! `PUT /v1/ox`: the notification Dovecot's built-in OX push driver sends, so that an
//! installation already running it needs no script. The driver sends one JSON object per new
//! message in INBOX: `{"user": ..., "event": "messageNew", "folder": "INBOX", "imap-uid": ...}`,
//! with Basic credentials taken from its URL (the password is the ingest token).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use dp_proto::events::{ChangeEvent, ChangeKind};
use dp_proto::ids::canonical_mailbox;
use serde::Deserialize;
use serde_json::json;

use crate::ingest::{answer, authorised, durable, read_body, unauthorised};
use crate::Shared;

/// The fields directpush reads; the driver's others (`from`, `subject`, `snippet`, `unseen`,
/// `imap-uidvalidity`) are ignored, and never logged.
#[derive(Deserialize)]
struct Notification {
    user: String,
    event: String,
    folder: String,
}

pub async fn notification(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorised(&shared, &headers) {
        return unauthorised(&shared);
    }
    let body = match read_body(&shared, body).await {
        Ok(body) => body,
        Err(refused) => return *refused,
    };
    match change(&body) {
        Ok(change) => durable(&shared, vec![change]).await,
        Err(reason) => {
            tracing::info!(%reason, "OX notification refused");
            answer(&shared, StatusCode::BAD_REQUEST, json!({ "error": reason }))
        }
    }
}

fn change(body: &[u8]) -> Result<ChangeEvent, String> {
    let note: Notification =
        serde_json::from_slice(body).map_err(|e| format!("not an OX notification: {e}"))?;
    if !note.event.eq_ignore_ascii_case("messageNew") {
        return Err(format!("event {:?} is not messageNew", note.event));
    }
    let change = ChangeEvent {
        mailbox: canonical_mailbox(&note.user),
        folders: Vec::new(),
        store_folder: Some(note.folder),
        kind: ChangeKind::Added,
        accepted_at_us: None,
    };
    change.validate().map_err(|e| e.to_string())?;
    Ok(change)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drivers_body_is_a_store_folder_change() {
        let body = br#"{"user":"Alice@Example.com","event":"messageNew","folder":"INBOX","imap-uidvalidity":1700000000,"imap-uid":7,"from":"x","subject":"y","snippet":"z","unseen":3}"#;
        let change = change(body).expect("taken");
        assert_eq!(change.mailbox, "alice@example.com");
        assert_eq!(change.store_folder.as_deref(), Some("INBOX"));
        assert_eq!(change.kind, ChangeKind::Added);
        let older = br#"{"user":"a","event":"MessageNew","folder":"INBOX"}"#;
        assert!(change_ok(older));
        assert!(!change_ok(
            br#"{"user":"a","event":"MessageRead","folder":"INBOX"}"#
        ));
        assert!(!change_ok(
            br#"{"user":"","event":"messageNew","folder":"INBOX"}"#
        ));
        assert!(!change_ok(br#"{"event":"messageNew","folder":"INBOX"}"#));
    }

    fn change_ok(body: &[u8]) -> bool {
        change(body).is_ok()
    }
}
