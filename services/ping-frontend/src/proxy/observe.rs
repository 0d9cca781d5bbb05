//! What the proxy learns from the commands it passes: a tap reads a copy of each FolderSync and
//! Sync body as it streams past (gunzipped when it is gzip), and once the exchange is over the
//! summaries become Redis state under the mailbox's hash tag, shared by every pod (I5).

use std::io::Write;

use base64::Engine as _;
use dp_keyspace::{Device, HierarchyChange, SyncStart, Synced};
use dp_proto::query::{Command, EasRequest};
use dp_proto::sync::{FolderChange, FolderSync, Sync};
use dp_proto::wbxml::scan::{Scanner, Sink, Tag};

use crate::Shared;

/// The summary a body is read into.
#[derive(Debug)]
pub enum Seen {
    FolderSync(FolderSync),
    Sync(Sync),
}

impl Seen {
    fn for_command(command: Command) -> Option<Seen> {
        match command {
            Command::FolderSync => Some(Seen::FolderSync(FolderSync::default())),
            Command::Sync => Some(Seen::Sync(Sync::default())),
            _ => None,
        }
    }
}

impl Sink for Seen {
    fn start(&mut self, path: &[Tag]) {
        match self {
            Seen::FolderSync(s) => s.start(path),
            Seen::Sync(s) => s.start(path),
        }
    }
    fn text(&mut self, path: &[Tag], text: &str) {
        match self {
            Seen::FolderSync(s) => s.text(path, text),
            Seen::Sync(s) => s.text(path, text),
        }
    }
    fn end(&mut self, path: &[Tag]) {
        match self {
            Seen::FolderSync(s) => s.end(path),
            Seen::Sync(s) => s.end(path),
        }
    }
}

/// The scanner and its summary, as a `Write` so a gzip decoder can feed it.
struct Feed {
    scanner: Scanner,
    seen: Seen,
    bytes: u64,
}

impl Write for Feed {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.scanner.feed(buf, &mut self.seen);
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads one body on the way past.
pub struct Tap(TapInner);

enum TapInner {
    Plain(Box<Feed>),
    Gzip(Box<flate2::write::GzDecoder<Feed>>),
    /// The copy could not be decompressed: nothing is learned from this body.
    Broken,
}

/// A finished tap: the summary, whether the body was read whole, and its decoded length.
pub struct Read {
    pub seen: Seen,
    pub complete: bool,
    pub bytes: u64,
}

impl Tap {
    /// A tap for `command`'s bodies, if the proxy learns from them.
    pub fn new(command: Command, gzip: bool) -> Option<Tap> {
        let feed = Feed {
            scanner: Scanner::default(),
            seen: Seen::for_command(command)?,
            bytes: 0,
        };
        Some(Tap(if gzip {
            TapInner::Gzip(Box::new(flate2::write::GzDecoder::new(feed)))
        } else {
            TapInner::Plain(Box::new(feed))
        }))
    }

    pub fn feed(&mut self, piece: &[u8]) {
        match &mut self.0 {
            TapInner::Plain(feed) => {
                let _ = feed.write(piece);
            }
            TapInner::Gzip(decoder) => {
                if decoder.write_all(piece).is_err() {
                    self.0 = TapInner::Broken;
                }
            }
            TapInner::Broken => {}
        }
    }

    pub fn finish(self) -> Option<Read> {
        let feed = match self.0 {
            TapInner::Plain(feed) => *feed,
            TapInner::Gzip(decoder) => decoder.finish().ok()?,
            TapInner::Broken => return None,
        };
        Some(Read {
            complete: feed.scanner.complete(),
            bytes: feed.bytes,
            seen: feed.seen,
        })
    }
}

/// Who the upstream vouched for with its 2xx: the Basic user name, else the `User` parameter.
pub fn mailbox(authorization: Option<&str>, query: &EasRequest) -> Option<String> {
    let basic = authorization
        .and_then(|a| {
            a.strip_prefix("Basic ")
                .or_else(|| a.strip_prefix("basic "))
        })
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(user, _)| user.to_owned()));
    let user = basic.or_else(|| query.user.clone())?;
    let mailbox = dp_proto::ids::canonical_mailbox(&user);
    (!mailbox.is_empty()).then_some(mailbox)
}

/// Records what a FolderSync taught: the device's hierarchy, afresh or as a delta.
pub async fn folder_sync(
    shared: &Shared,
    device: Device<'_>,
    hierarchy: u64,
    request: &Read,
    response: &Read,
) {
    let (Seen::FolderSync(asked), Seen::FolderSync(answer)) = (&request.seen, &response.seen)
    else {
        return;
    };
    if !response.complete || answer.status != Some(1) {
        return;
    }
    let changes: Vec<HierarchyChange> = answer
        .changes
        .iter()
        .map(|change| match change {
            FolderChange::Put(f) => HierarchyChange::Put {
                server_id: &f.server_id,
                parent_id: &f.parent_id,
                display_name: &f.display_name,
                folder_type: f.folder_type,
            },
            FolderChange::Delete(id) => HierarchyChange::Delete(id),
        })
        .collect();
    let mut redis = shared.redis.clone();
    let applied =
        shared
            .store
            .apply_hierarchy(&mut redis, device, asked.is_initial(), hierarchy, &changes);
    settle(shared, device, "hierarchy", applied).await;
}

/// Records what a Sync delivered: each completed collection at the version read when the Sync
/// started (a change during it stays news), and which collections an empty Sync repeats.
pub async fn sync(
    shared: &Shared,
    device: Device<'_>,
    start: &SyncStart,
    request: &Read,
    response: &Read,
) {
    let (Seen::Sync(asked), Seen::Sync(answer)) = (&request.seen, &response.seen) else {
        return;
    };
    let requested: Vec<String> = if asked.present {
        asked.collections.iter().map(|c| c.id.clone()).collect()
    } else {
        start.last_request.clone()
    };
    let completed: Vec<(&str, Option<&str>)> = if response.bytes == 0 {
        // An empty response: nothing new in any requested collection.
        requested.iter().map(|id| (id.as_str(), None)).collect()
    } else if response.complete {
        answer
            .completed()
            .map(|c| (c.id.as_str(), c.sync_key.as_deref()))
            .collect()
    } else {
        Vec::new()
    };
    let synced: Vec<Synced> = completed
        .into_iter()
        .map(|(collection, sync_key)| Synced {
            collection,
            version: start.versions.get(collection).copied().unwrap_or(0),
            sync_key,
        })
        .collect();
    let last_request = match (asked.present, asked.partial) {
        (false, _) => None,
        (true, false) => Some(requested.clone()),
        (true, true) => {
            let mut merged = start.last_request.clone();
            merged.extend(
                requested
                    .iter()
                    .filter(|id| !start.last_request.contains(id))
                    .cloned(),
            );
            Some(merged)
        }
    };
    if synced.is_empty() && last_request.is_none() {
        return;
    }
    let mut redis = shared.redis.clone();
    let recorded = shared
        .store
        .synced(&mut redis, device, &synced, last_request.as_deref());
    settle(shared, device, "sync", recorded).await;
}

async fn settle(
    shared: &Shared,
    device: Device<'_>,
    what: &'static str,
    done: impl std::future::Future<Output = redis::RedisResult<()>>,
) {
    match tokio::time::timeout(shared.config.redis_timeout, done).await {
        Ok(Ok(())) => shared.metrics.observed(what),
        // Not recorded: a hierarchy is learned again at the next FolderSync; a Sync not
        // recorded leaves its folders reported (a duplicate Status 2, never a loss).
        _ => {
            shared.metrics.redis_errors.inc();
            tracing::warn!(mailbox = %device.mailbox, device = %device.device_id, what, "proxy observation not recorded in Redis");
        }
    }
}
