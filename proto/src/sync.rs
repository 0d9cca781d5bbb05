//! What the proxy learns from FolderSync and Sync as they pass (MS-ASCMD 2.2.1.5, 2.2.1.21):
//! the device's folder hierarchy, and which collections a Sync completed. Each summary is a
//! [`Sink`] for the streaming scanner, so a body is read once, as it passes, in constant memory.

use crate::wbxml::scan::{Scanner, Sink, Tag};

/// AirSync (code page 0) tags.
mod air {
    pub const SYNC: u8 = 0x05;
    pub const SYNC_KEY: u8 = 0x0B;
    pub const STATUS: u8 = 0x0E;
    pub const COLLECTION: u8 = 0x0F;
    pub const COLLECTION_ID: u8 = 0x12;
    pub const MORE_AVAILABLE: u8 = 0x14;
    pub const PARTIAL: u8 = 0x26;
}

/// FolderHierarchy (code page 7) tags.
mod fh {
    pub const PAGE: u8 = 7;
    pub const DISPLAY_NAME: u8 = 0x07;
    pub const SERVER_ID: u8 = 0x08;
    pub const PARENT_ID: u8 = 0x09;
    pub const TYPE: u8 = 0x0A;
    pub const STATUS: u8 = 0x0C;
    pub const ADD: u8 = 0x0F;
    pub const DELETE: u8 = 0x10;
    pub const UPDATE: u8 = 0x11;
    pub const SYNC_KEY: u8 = 0x12;
}

/// The last tag of a path.
fn last(path: &[Tag]) -> Tag {
    path.last().copied().unwrap_or((0xFF, 0))
}

/// The tag before the last.
fn parent(path: &[Tag]) -> Tag {
    path.len().checked_sub(2).map_or((0xFF, 0), |i| path[i])
}

/// One folder as FolderSync describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Folder {
    pub server_id: String,
    pub parent_id: String,
    pub display_name: String,
    /// MS-ASCMD 2.2.3.186.3: 2 Inbox, 3 Drafts, 4 Deleted Items, 5 Sent Items, 12 user mail...
    pub folder_type: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderChange {
    /// Add or Update: the folder as it now is.
    Put(Folder),
    Delete(String),
}

/// A FolderSync request or response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FolderSync {
    pub status: Option<u32>,
    pub sync_key: Option<String>,
    pub changes: Vec<FolderChange>,
    current: Option<Folder>,
}

impl FolderSync {
    /// Whether a request asks for the whole hierarchy afresh (SyncKey 0).
    pub fn is_initial(&self) -> bool {
        self.sync_key.as_deref() == Some("0")
    }
}

impl Sink for FolderSync {
    fn start(&mut self, path: &[Tag]) {
        if matches!(last(path), (fh::PAGE, fh::ADD | fh::UPDATE)) {
            self.current = Some(Folder::default());
        }
    }

    fn text(&mut self, path: &[Tag], text: &str) {
        match (parent(path), last(path)) {
            ((fh::PAGE, fh::ADD | fh::UPDATE), (fh::PAGE, tag)) => {
                if let Some(folder) = &mut self.current {
                    match tag {
                        fh::SERVER_ID => folder.server_id = text.to_owned(),
                        fh::PARENT_ID => folder.parent_id = text.to_owned(),
                        fh::DISPLAY_NAME => folder.display_name = text.to_owned(),
                        fh::TYPE => folder.folder_type = text.parse().unwrap_or(0),
                        _ => {}
                    }
                }
            }
            ((fh::PAGE, fh::DELETE), (fh::PAGE, fh::SERVER_ID)) => {
                self.changes.push(FolderChange::Delete(text.to_owned()));
            }
            (_, (fh::PAGE, fh::STATUS)) if path.len() == 2 => self.status = text.parse().ok(),
            (_, (fh::PAGE, fh::SYNC_KEY)) if path.len() == 2 => {
                self.sync_key = Some(text.to_owned())
            }
            _ => {}
        }
    }

    fn end(&mut self, path: &[Tag]) {
        if matches!(last(path), (fh::PAGE, fh::ADD | fh::UPDATE)) {
            if let Some(folder) = self.current.take().filter(|f| !f.server_id.is_empty()) {
                self.changes.push(FolderChange::Put(folder));
            }
        }
    }
}

/// One collection of a Sync request or response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Collection {
    pub id: String,
    pub sync_key: Option<String>,
    pub status: Option<u32>,
    pub more_available: bool,
}

/// A Sync request or response, as far as acknowledging Pings needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sync {
    /// Whether a `Sync` element was seen at all: an empty request repeats the last full one,
    /// an empty response means "nothing new" for every requested collection.
    pub present: bool,
    /// The top-level Status of a response (an error for the whole request).
    pub status: Option<u32>,
    pub partial: bool,
    pub collections: Vec<Collection>,
}

impl Sync {
    /// The collections a response completed: Status 1 (or none: success), every item
    /// delivered (no MoreAvailable), and no error for the whole request.
    pub fn completed(&self) -> impl Iterator<Item = &Collection> {
        let whole_ok = self.status.is_none_or(|s| s == 1);
        self.collections
            .iter()
            .filter(move |c| whole_ok && c.status.is_none_or(|s| s == 1) && !c.more_available)
    }
}

impl Sink for Sync {
    fn start(&mut self, path: &[Tag]) {
        match (path.len(), last(path)) {
            (1, (0, air::SYNC)) => self.present = true,
            (3, (0, air::COLLECTION)) => self.collections.push(Collection::default()),
            (2, (0, air::PARTIAL)) => self.partial = true,
            (4, (0, air::MORE_AVAILABLE)) => {
                if let Some(c) = self.collections.last_mut() {
                    c.more_available = true;
                }
            }
            _ => {}
        }
    }

    fn text(&mut self, path: &[Tag], text: &str) {
        if path.len() == 2 && last(path) == (0, air::STATUS) {
            self.status = text.parse().ok();
            return;
        }
        if path.len() != 4 || parent(path) != (0, air::COLLECTION) {
            return;
        }
        let Some(collection) = self.collections.last_mut() else {
            return;
        };
        match last(path) {
            (0, air::COLLECTION_ID) => collection.id = text.to_owned(),
            (0, air::SYNC_KEY) => collection.sync_key = Some(text.to_owned()),
            (0, air::STATUS) => collection.status = text.parse().ok(),
            _ => {}
        }
    }
}

/// GetItemEstimate (code page 6) tags.
mod gie {
    pub const PAGE: u8 = 6;
    pub const GET_ITEM_ESTIMATE: u8 = 0x05;
    pub const COLLECTIONS: u8 = 0x07;
    pub const COLLECTION: u8 = 0x08;
    pub const COLLECTION_ID: u8 = 0x0A;
    pub const ESTIMATE: u8 = 0x0C;
    pub const RESPONSE: u8 = 0x0D;
    pub const STATUS: u8 = 0x0E;
}

/// A GetItemEstimate request for collections at their SyncKeys (the EAS 14 form: SyncKey,
/// then CollectionId). It changes no sync state on the server: a safe probe.
pub fn estimate_request<'a>(collections: impl Iterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut list = crate::wbxml::Element::new(gie::PAGE, gie::COLLECTIONS);
    for (id, sync_key) in collections {
        list = list.child(
            crate::wbxml::Element::new(gie::PAGE, gie::COLLECTION)
                .child(crate::wbxml::Element::with_text(0, air::SYNC_KEY, sync_key))
                .child(crate::wbxml::Element::with_text(
                    gie::PAGE,
                    gie::COLLECTION_ID,
                    id,
                )),
        );
    }
    let root = crate::wbxml::Element::new(gie::PAGE, gie::GET_ITEM_ESTIMATE).child(list);
    crate::wbxml::encode(&root).unwrap_or_default()
}

/// A GetItemEstimate response: the whole request's status (a global one such as 142 stands
/// here) and each collection's estimate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimates {
    pub status: Option<u32>,
    /// (collection id, its Response's Status, the estimate)
    pub collections: Vec<(String, Option<u32>, Option<u64>)>,
}

impl Sink for Estimates {
    fn start(&mut self, path: &[Tag]) {
        if path.len() == 2 && last(path) == (gie::PAGE, gie::RESPONSE) {
            self.collections.push((String::new(), None, None));
        }
    }

    fn text(&mut self, path: &[Tag], text: &str) {
        match (path.len(), last(path)) {
            (2, (gie::PAGE, gie::STATUS)) => self.status = text.parse().ok(),
            (3, (gie::PAGE, gie::STATUS)) => {
                if let Some(c) = self.collections.last_mut() {
                    c.1 = text.parse().ok();
                }
            }
            (4, (gie::PAGE, gie::COLLECTION_ID)) => {
                if let Some(c) = self.collections.last_mut() {
                    c.0 = text.to_owned();
                }
            }
            (4, (gie::PAGE, gie::ESTIMATE)) => {
                if let Some(c) = self.collections.last_mut() {
                    c.2 = text.parse().ok();
                }
            }
            _ => {}
        }
    }
}

/// Scans a whole body at once (tests, and bodies already in memory).
pub fn scan<S: Sink + Default>(bytes: &[u8]) -> (S, bool) {
    let mut sink = S::default();
    let mut scanner = Scanner::default();
    scanner.feed(bytes, &mut sink);
    (sink, scanner.complete())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbxml::{encode, Element};

    fn fh(token: u8, text: &str) -> Element {
        Element::with_text(fh::PAGE, token, text)
    }

    #[test]
    fn reads_a_folder_sync_response() {
        let add = |id: &str, parent: &str, name: &str, ty: &str| {
            Element::new(fh::PAGE, fh::ADD)
                .child(fh(fh::SERVER_ID, id))
                .child(fh(fh::PARENT_ID, parent))
                .child(fh(fh::DISPLAY_NAME, name))
                .child(fh(fh::TYPE, ty))
        };
        let root = Element::new(fh::PAGE, 0x16)
            .child(fh(fh::STATUS, "1"))
            .child(fh(fh::SYNC_KEY, "3"))
            .child(
                Element::new(fh::PAGE, 0x0E)
                    .child(fh(0x17, "3"))
                    .child(add("mail/INBOX", "0", "Inbox", "2"))
                    .child(Element::new(fh::PAGE, fh::DELETE).child(fh(fh::SERVER_ID, "old")))
                    .child(add("mail/Archive", "0", "Archive", "12")),
            );
        let (sync, complete): (FolderSync, bool) = scan(&encode(&root).expect("encodes"));
        assert!(complete);
        assert_eq!(sync.status, Some(1));
        assert_eq!(sync.sync_key.as_deref(), Some("3"));
        assert!(!sync.is_initial());
        assert_eq!(sync.changes.len(), 3);
        assert_eq!(
            sync.changes[0],
            FolderChange::Put(Folder {
                server_id: "mail/INBOX".into(),
                parent_id: "0".into(),
                display_name: "Inbox".into(),
                folder_type: 2
            })
        );
        assert_eq!(sync.changes[1], FolderChange::Delete("old".into()));
    }

    #[test]
    fn an_estimate_request_and_its_answer() {
        let request = estimate_request([("inbox", "k1")].into_iter());
        let xml = crate::wbxml::xml::to_xml(&crate::wbxml::decode(&request).expect("decodes"));
        assert!(xml.contains("k1") && xml.contains("inbox"), "{xml}");
        let response = Element::new(gie::PAGE, gie::GET_ITEM_ESTIMATE).child(
            Element::new(gie::PAGE, gie::RESPONSE)
                .child(Element::with_text(gie::PAGE, gie::STATUS, "1"))
                .child(
                    Element::new(gie::PAGE, gie::COLLECTION)
                        .child(Element::with_text(gie::PAGE, gie::COLLECTION_ID, "inbox"))
                        .child(Element::with_text(gie::PAGE, gie::ESTIMATE, "3")),
                ),
        );
        let (estimates, complete): (Estimates, bool) = scan(&encode(&response).expect("encodes"));
        assert!(complete);
        assert_eq!(estimates.collections, [("inbox".into(), Some(1), Some(3))]);
        let global = Element::new(gie::PAGE, gie::GET_ITEM_ESTIMATE).child(Element::with_text(
            gie::PAGE,
            gie::STATUS,
            "142",
        ));
        let (estimates, _): (Estimates, bool) = scan(&encode(&global).expect("encodes"));
        assert_eq!(estimates.status, Some(142));
    }

    #[test]
    fn reads_which_collections_a_sync_completed() {
        let collection = |id: &str, key: &str, status: &str, more: bool| {
            let mut c = Element::new(0, air::COLLECTION)
                .child(Element::with_text(0, air::SYNC_KEY, key))
                .child(Element::with_text(0, air::COLLECTION_ID, id))
                .child(Element::with_text(0, air::STATUS, status));
            if more {
                c = c.child(Element::new(0, air::MORE_AVAILABLE));
            }
            c
        };
        let root = Element::new(0, air::SYNC).child(
            Element::new(0, 0x1C)
                .child(collection("inbox", "k2", "1", false))
                .child(collection("sent", "k7", "1", true))
                .child(collection("cal", "0", "3", false)),
        );
        let (sync, complete): (Sync, bool) = scan(&encode(&root).expect("encodes"));
        assert!(complete && sync.present && !sync.partial);
        let done: Vec<&str> = sync.completed().map(|c| c.id.as_str()).collect();
        assert_eq!(done, ["inbox"], "MoreAvailable and errors are not complete");
        assert_eq!(sync.collections[0].sync_key.as_deref(), Some("k2"));

        let failed = Element::new(0, air::SYNC)
            .child(Element::with_text(0, air::STATUS, "12"))
            .child(Element::new(0, 0x1C).child(collection("inbox", "k", "1", false)));
        let (sync, _): (Sync, bool) = scan(&encode(&failed).expect("encodes"));
        assert_eq!(sync.completed().count(), 0, "a whole-request error");

        let (empty, complete): (Sync, bool) = scan(b"");
        assert!(!empty.present && !complete);
    }
}
