//! The messages the cluster passes over NATS, and the subjects they travel on
//! (ARCHITECTURE.md section 4). JSON on the wire; the schemas in `proto/schema/` are generated
//! from these types and checked by `tests/schemas.rs`. Trace context travels beside them, in a
//! W3C `traceparent` message header.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::token;
use crate::ping::MAX_FOLDER_ID;

/// Longest mailbox name accepted (an e-mail address is at most 320 characters).
pub const MAX_MAILBOX: usize = 320;
/// Most folders one change may name.
pub const MAX_FOLDERS_PER_CHANGE: usize = 1000;
/// Longest store folder name accepted (IMAP servers allow about this much).
pub const MAX_STORE_FOLDER: usize = 1000;

/// What happened in the folders. Only `added` wakes a parked Ping by default: new mail, items
/// copied or moved in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    #[default]
    Added,
    Modified,
    Removed,
    /// A folder was created, deleted or renamed: the mailbox's parked Pings answer Status 7
    /// (FolderSync first), whatever WAKE_ON says. `folders` may be empty.
    Hierarchy,
}

/// A mailbox change, as the ingest API takes it and as it sits in the JetStream stream
/// `<ns>.changes.<mailbox token>`. Producers may publish it to the stream directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEvent {
    /// The mailbox, as devices authenticate (compared case-insensitively).
    pub mailbox: String,
    /// ServerIds of the folders that changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub folders: Vec<String>,
    /// The folder that changed in the mail store's own words (`INBOX`, `Archive/2024`): the
    /// watcher maps it to each device's ServerId through the hierarchy the proxy learned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_folder: Option<String>,
    #[serde(default)]
    pub kind: ChangeKind,
    /// When the change was accepted, in microseconds since the Unix epoch: the start of the
    /// wake-latency clock. Set by the ingest API; direct producers may leave it out, and the
    /// stream's own timestamp is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at_us: Option<u64>,
}

/// Why a change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("mailbox is empty")]
    EmptyMailbox,
    #[error("mailbox is longer than {MAX_MAILBOX} characters")]
    LongMailbox,
    #[error("mailbox holds a control character")]
    MailboxControl,
    #[error("neither folders nor store_folder names a folder")]
    NoFolders,
    #[error("store_folder is empty, longer than {MAX_STORE_FOLDER} characters or holds a control character")]
    BadStoreFolder,
    #[error("more than {MAX_FOLDERS_PER_CHANGE} folders")]
    TooManyFolders,
    #[error("folder {0:?} is empty, longer than {MAX_FOLDER_ID} characters or holds a control character")]
    BadFolder(String),
}

impl ChangeEvent {
    pub fn validate(&self) -> Result<(), ChangeError> {
        let mailbox = self.mailbox.trim();
        if mailbox.is_empty() {
            return Err(ChangeError::EmptyMailbox);
        }
        if mailbox.chars().count() > MAX_MAILBOX {
            return Err(ChangeError::LongMailbox);
        }
        if mailbox.chars().any(char::is_control) {
            return Err(ChangeError::MailboxControl);
        }
        if self.folders.is_empty()
            && self.store_folder.is_none()
            && self.kind != ChangeKind::Hierarchy
        {
            return Err(ChangeError::NoFolders);
        }
        if let Some(name) = &self.store_folder {
            let len = name.chars().count();
            if len == 0 || len > MAX_STORE_FOLDER || name.chars().any(char::is_control) {
                return Err(ChangeError::BadStoreFolder);
            }
        }
        if self.folders.len() > MAX_FOLDERS_PER_CHANGE {
            return Err(ChangeError::TooManyFolders);
        }
        for folder in &self.folders {
            let len = folder.chars().count();
            if len == 0 || len > MAX_FOLDER_ID || folder.chars().any(char::is_control) {
                return Err(ChangeError::BadFolder(folder.clone()));
            }
        }
        Ok(())
    }
}

/// A folder's version after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FolderVersion {
    pub id: String,
    pub version: u64,
}

/// A parked Ping to wake: the device key and the request id its pod gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WakeTarget {
    pub device: String,
    pub request: u64,
}

/// Sent by the watcher on `<ns>.pod.<pod>.wake` to a pod that holds Pings of the mailbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WakeEvent {
    pub mailbox: String,
    /// The folders that changed, with their versions after the change.
    pub folders: Vec<FolderVersion>,
    pub targets: Vec<WakeTarget>,
    /// The earliest acceptance time among the changes this wake carries (microseconds).
    pub accepted_at_us: u64,
    /// The mailbox's folder hierarchy changed: the Pings answer Status 7.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hierarchy: bool,
    /// Store folders changed: which ServerIds that means differs per device, so each target
    /// re-checks its folders in Redis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recheck: bool,
    /// When the wake passed each stage of the watcher, for the frontends' stage budget
    /// (`dp_frontend_wake_stage_seconds`). Absent from wakes no watcher sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<WakeStages>,
}

/// A wake's way through the watcher, in microseconds since the Unix epoch on the watcher's
/// clock (the acceptance time is [`WakeEvent::accepted_at_us`]). For the group of changes the
/// wake carries: the earliest stored, then when the dispatcher took the first of them, closed
/// its batch, had the bump done and sent the wake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WakeStages {
    /// JetStream stored the change (its timestamp).
    pub stored_us: u64,
    /// The dispatcher received the batch's first change.
    pub taken_us: u64,
    /// The batch closed (the coalescing window ended, or the batch was full).
    pub closed_us: u64,
    /// The mailbox's bump returned (with its replicas, in cluster mode).
    pub bumped_us: u64,
    /// The wake was handed to NATS.
    pub sent_us: u64,
}

/// Sent by a pod on `<ns>.pod.<pod>.evict` when a newer Ping of the device superseded the one
/// parked on `<pod>`: the older one answers Status 1.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EvictEvent {
    pub device: String,
    pub request: u64,
}

/// The subjects and stream of one namespace.
#[derive(Clone, Debug)]
pub struct Subjects {
    ns: String,
}

impl Subjects {
    /// `namespace` is a `DP_NAMESPACE`, already checked to be a single subject token.
    pub fn new(namespace: &str) -> Self {
        Subjects {
            ns: namespace.to_owned(),
        }
    }

    /// `<ns>.changes.<mailbox token>`.
    pub fn change(&self, mailbox: &str) -> String {
        format!("{}.changes.{}", self.ns, token(mailbox))
    }

    /// `<ns>.changes.>`: what the stream holds.
    pub fn all_changes(&self) -> String {
        format!("{}.changes.>", self.ns)
    }

    /// The JetStream stream name (names may not contain `.`).
    pub fn stream(&self) -> String {
        format!("{}_changes", self.ns)
    }

    /// `<ns>.dead.<mailbox token>`: a change no dispatch could carry out, kept in the
    /// dead-letter stream for an operator.
    pub fn dead(&self, mailbox: &str) -> String {
        format!("{}.dead.{}", self.ns, token(mailbox))
    }

    /// `<ns>.dead.>`.
    pub fn all_dead(&self) -> String {
        format!("{}.dead.>", self.ns)
    }

    /// The dead-letter stream's name.
    pub fn dead_stream(&self) -> String {
        format!("{}_dead", self.ns)
    }

    /// `<ns>.woken.<mailbox token>`: a change its watcher bumped and woke as it took it in,
    /// kept in the woken stream, which no dispatcher reads.
    pub fn woken(&self, mailbox: &str) -> String {
        format!("{}.woken.{}", self.ns, token(mailbox))
    }

    /// `<ns>.woken.>`.
    pub fn all_woken(&self) -> String {
        format!("{}.woken.>", self.ns)
    }

    /// The woken stream's name.
    pub fn woken_stream(&self) -> String {
        format!("{}_woken", self.ns)
    }

    /// `<ns>.pod.<pod>.wake`.
    pub fn wake(&self, pod: &str) -> String {
        format!("{}.pod.{}.wake", self.ns, token(pod))
    }

    /// `<ns>.pod.<pod>.evict`.
    pub fn evict(&self, pod: &str) -> String {
        format!("{}.pod.{}.evict", self.ns, token(pod))
    }
}

/// Whether a string can be a `DP_NAMESPACE`: one subject token, one Redis key part and part of
/// a stream name, so letters, digits, `-` and `_`, 1 to 64 of them.
pub fn valid_namespace(ns: &str) -> bool {
    (1..=64).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_body_parses_with_defaults() {
        let change: ChangeEvent =
            serde_json::from_str(r#"{"mailbox":"alice@example.com","folders":["5"]}"#)
                .expect("parses");
        assert_eq!(change.kind, ChangeKind::Added);
        assert_eq!(change.validate(), Ok(()));
        let bad: Result<ChangeEvent, _> =
            serde_json::from_str(r#"{"mailbox":"a","folders":["5"],"kind":"exploded"}"#);
        assert!(bad.is_err());
        let unknown: Result<ChangeEvent, _> =
            serde_json::from_str(r#"{"mailbox":"a","folders":["5"],"foldr":1}"#);
        assert!(unknown.is_err(), "typos are refused, not ignored");
    }

    #[test]
    fn validation_names_the_problem() {
        let change = |mailbox: &str, folders: &[&str]| ChangeEvent {
            mailbox: mailbox.into(),
            folders: folders.iter().map(|f| f.to_string()).collect(),
            store_folder: None,
            kind: ChangeKind::Added,
            accepted_at_us: None,
        };
        assert_eq!(
            change(" ", &["1"]).validate(),
            Err(ChangeError::EmptyMailbox)
        );
        assert_eq!(change("a", &[]).validate(), Err(ChangeError::NoFolders));
        let store = |name: &str| ChangeEvent {
            store_folder: Some(name.into()),
            ..change("a", &[])
        };
        assert_eq!(store("Archive/2024").validate(), Ok(()));
        assert_eq!(store("").validate(), Err(ChangeError::BadStoreFolder));
        assert_eq!(store("a\tb").validate(), Err(ChangeError::BadStoreFolder));
        assert_eq!(
            change("a\nb", &["1"]).validate(),
            Err(ChangeError::MailboxControl)
        );
        assert_eq!(
            change("a", &[""]).validate(),
            Err(ChangeError::BadFolder(String::new()))
        );
        let long = "m".repeat(MAX_MAILBOX + 1);
        assert_eq!(
            change(&long, &["1"]).validate(),
            Err(ChangeError::LongMailbox)
        );
    }

    #[test]
    fn subjects_are_single_tokens_per_part() {
        let s = Subjects::new("dp");
        assert_eq!(s.change("a.b*c>"), "dp.changes.a_2Eb_2Ac_3E");
        assert_eq!(s.wake("frontend-0"), "dp.pod.frontend-0.wake");
        assert_eq!(s.evict("pod.x"), "dp.pod.pod_2Ex.evict");
        assert_eq!(s.stream(), "dp_changes");
        assert!(valid_namespace("t_1-a") && !valid_namespace("a.b") && !valid_namespace(""));
    }
}
