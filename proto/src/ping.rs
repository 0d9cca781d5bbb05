//! The Ping command (MS-ASCMD 2.2.1.13): its request, the validation that maps each defect to the
//! status the device expects, and the responses for statuses 1-8.

use crate::wbxml::{self, DecodeError, Element, Limits};

/// Code page 13.
pub const PAGE: u8 = 13;

/// Ping tokens (MS-ASWBXML code page 13).
pub mod tag {
    pub const PING: u8 = 0x05;
    pub const STATUS: u8 = 0x07;
    pub const HEARTBEAT_INTERVAL: u8 = 0x08;
    pub const FOLDERS: u8 = 0x09;
    pub const FOLDER: u8 = 0x0A;
    pub const ID: u8 = 0x0B;
    pub const CLASS: u8 = 0x0C;
    pub const MAX_FOLDERS: u8 = 0x0D;
}

/// Longest folder ServerId, in characters (MS-ASCMD 2.2.3.89.2).
pub const MAX_FOLDER_ID: usize = 64;

/// A Ping body is small; a folder is about 20 bytes, so 64 KiB holds thousands.
pub const BODY_LIMITS: Limits = Limits {
    max_len: 64 * 1024,
    max_depth: 8,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum FolderClass {
    Email,
    Calendar,
    Contacts,
    Tasks,
    Notes,
}

impl FolderClass {
    pub const ALL: [FolderClass; 5] = [
        Self::Email,
        Self::Calendar,
        Self::Contacts,
        Self::Tasks,
        Self::Notes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "Email",
            Self::Calendar => "Calendar",
            Self::Contacts => "Contacts",
            Self::Tasks => "Tasks",
            Self::Notes => "Notes",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// One monitored folder.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PingFolder {
    pub id: String,
    pub class: FolderClass,
}

/// What a Ping request says. Both parts are optional: an empty body, or a body with one part,
/// reuses what the device sent last.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PingRequest {
    pub heartbeat: Option<u32>,
    pub folders: Option<Vec<PingFolder>>,
}

/// Why a body is not a valid Ping; every one of these is answered with Status 4.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    #[error(transparent)]
    Wbxml(#[from] DecodeError),
    #[error("root element is not Ping")]
    NotPing,
    #[error("Ping element is empty")]
    Bare,
    #[error("unexpected element {0} in a Ping request")]
    Unexpected(String),
    #[error("{0} appears more than once")]
    Repeated(&'static str),
    #[error("Folders holds no Folder")]
    NoFolder,
    #[error("Folder without {0}")]
    FolderWithout(&'static str),
    #[error("folder Id {0:?} appears twice")]
    DuplicateFolder(String),
    #[error("folder Id is empty or longer than {MAX_FOLDER_ID} characters")]
    BadFolderId,
    #[error("folder Class {0:?} is not Email, Calendar, Contacts, Tasks or Notes")]
    UnknownClass(String),
    #[error("HeartbeatInterval {0:?} is not a number of seconds")]
    BadHeartbeat(String),
}

impl PingRequest {
    /// Parses a request body; an empty body is a valid request with neither part.
    pub fn parse(body: &[u8]) -> Result<Self, PingError> {
        if body.is_empty() {
            return Ok(PingRequest::default());
        }
        let root = wbxml::decode_with(body, BODY_LIMITS)?;
        Self::from_element(&root)
    }

    pub fn from_element(root: &Element) -> Result<Self, PingError> {
        if (root.page, root.token) != (PAGE, tag::PING) {
            return Err(PingError::NotPing);
        }
        if root.children.is_empty() {
            return Err(PingError::Bare);
        }
        let mut request = PingRequest::default();
        for node in &root.children {
            let wbxml::Node::Element(child) = node else {
                return Err(PingError::Unexpected("text".into()));
            };
            match (child.page, child.token) {
                (PAGE, tag::HEARTBEAT_INTERVAL) => {
                    if request.heartbeat.is_some() {
                        return Err(PingError::Repeated("HeartbeatInterval"));
                    }
                    request.heartbeat = Some(parse_seconds(child)?);
                }
                (PAGE, tag::FOLDERS) => {
                    if request.folders.is_some() {
                        return Err(PingError::Repeated("Folders"));
                    }
                    request.folders = Some(parse_folders(child)?);
                }
                _ => return Err(PingError::Unexpected(describe(child))),
            }
        }
        Ok(request)
    }

    /// The request as a tree; an empty request is `None` (send an empty body).
    pub fn to_element(&self) -> Option<Element> {
        if self.heartbeat.is_none() && self.folders.is_none() {
            return None;
        }
        let mut ping = Element::new(PAGE, tag::PING);
        if let Some(seconds) = self.heartbeat {
            ping = ping.child(Element::with_text(
                PAGE,
                tag::HEARTBEAT_INTERVAL,
                seconds.to_string(),
            ));
        }
        if let Some(folders) = &self.folders {
            let mut list = Element::new(PAGE, tag::FOLDERS);
            for folder in folders {
                list = list.child(
                    Element::new(PAGE, tag::FOLDER)
                        .child(Element::with_text(PAGE, tag::ID, folder.id.as_str()))
                        .child(Element::with_text(PAGE, tag::CLASS, folder.class.as_str())),
                );
            }
            ping = ping.child(list);
        }
        Some(ping)
    }

    /// The request body as a device would send it. Folder Ids with a NUL byte cannot be sent
    /// and are refused.
    pub fn encode(&self) -> Result<Vec<u8>, wbxml::EncodeError> {
        self.to_element()
            .map_or(Ok(Vec::new()), |root| wbxml::encode(&root))
    }

    /// Checks the parts the request carries against the configured limits (Status 5 and 6);
    /// the parts it leaves out were checked when they were first sent.
    pub fn check(&self, limits: &PingLimits) -> Result<(), PingResponse> {
        if let Some(seconds) = self.heartbeat {
            if seconds < limits.min_heartbeat {
                return Err(PingResponse::bad_heartbeat(limits.min_heartbeat));
            }
            if seconds > limits.max_heartbeat {
                return Err(PingResponse::bad_heartbeat(limits.max_heartbeat));
            }
        }
        if let Some(folders) = &self.folders {
            if folders.len() > limits.max_folders {
                return Err(PingResponse::too_many_folders(limits.max_folders));
            }
        }
        Ok(())
    }
}

fn describe(element: &Element) -> String {
    element.name().map_or_else(
        || format!("{}:{:#04x}", element.page, element.token),
        str::to_owned,
    )
}

fn parse_seconds(element: &Element) -> Result<u32, PingError> {
    let text = element.text().unwrap_or_default();
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PingError::BadHeartbeat(text));
    }
    text.parse().map_err(|_| PingError::BadHeartbeat(text))
}

fn parse_folders(list: &Element) -> Result<Vec<PingFolder>, PingError> {
    let mut folders: Vec<PingFolder> = Vec::new();
    for node in &list.children {
        let wbxml::Node::Element(folder) = node else {
            return Err(PingError::Unexpected("text in Folders".into()));
        };
        if (folder.page, folder.token) != (PAGE, tag::FOLDER) {
            return Err(PingError::Unexpected(describe(folder)));
        }
        let parsed = parse_folder(folder)?;
        if folders.iter().any(|f| f.id == parsed.id) {
            return Err(PingError::DuplicateFolder(parsed.id));
        }
        folders.push(parsed);
    }
    if folders.is_empty() {
        return Err(PingError::NoFolder);
    }
    Ok(folders)
}

fn parse_folder(folder: &Element) -> Result<PingFolder, PingError> {
    let mut id = None;
    let mut class = None;
    for child in folder.elements() {
        let slot = match (child.page, child.token) {
            (PAGE, tag::ID) => &mut id,
            (PAGE, tag::CLASS) => &mut class,
            _ => return Err(PingError::Unexpected(describe(child))),
        };
        if slot.is_some() {
            return Err(PingError::Repeated(if child.token == tag::ID {
                "Id"
            } else {
                "Class"
            }));
        }
        *slot = Some(child.text().unwrap_or_default());
    }
    let id = id.ok_or(PingError::FolderWithout("Id"))?;
    if id.is_empty() || id.chars().count() > MAX_FOLDER_ID {
        return Err(PingError::BadFolderId);
    }
    let class = class.ok_or(PingError::FolderWithout("Class"))?;
    let class = FolderClass::parse(&class).ok_or(PingError::UnknownClass(class))?;
    Ok(PingFolder { id, class })
}

/// Heartbeat and folder bounds. Defaults as Exchange: 60 s to 3540 s, 300 folders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingLimits {
    pub min_heartbeat: u32,
    pub max_heartbeat: u32,
    pub max_folders: usize,
}

impl Default for PingLimits {
    fn default() -> Self {
        PingLimits {
            min_heartbeat: 60,
            max_heartbeat: 3540,
            max_folders: 300,
        }
    }
}

/// Ping statuses (MS-ASCMD 2.2.3.177.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PingStatus {
    /// The heartbeat expired with nothing new; also the answer to a superseded Ping.
    Expired = 1,
    /// New items in the listed folders.
    Changes = 2,
    /// The request lacks parameters and none are cached: resend the full body.
    MissingParameters = 3,
    /// The request is malformed.
    SyntaxError = 4,
    /// The heartbeat is out of bounds; the response carries the bound.
    InvalidHeartbeat = 5,
    /// Too many folders; the response carries the limit.
    TooManyFolders = 6,
    /// The folder hierarchy is out of date: FolderSync first.
    FolderSyncRequired = 7,
    /// A transient server error: retry.
    ServerError = 8,
    /// MS-ASCMD 2.2.2 global statuses an upstream may answer any command with; a device that
    /// only Pings hears them only if its Ping does (MS-ASPROV).
    /// The device must wipe itself.
    RemoteWipeRequested = 140,
    /// The device must Provision first.
    DeviceNotProvisioned = 142,
    /// The device must fetch the policy again.
    PolicyRefresh = 143,
    /// The device's policy key is out of date.
    InvalidPolicyKey = 144,
}

impl PingStatus {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        use PingStatus::*;
        [
            Expired,
            Changes,
            MissingParameters,
            SyntaxError,
            InvalidHeartbeat,
            TooManyFolders,
            FolderSyncRequired,
            ServerError,
            RemoteWipeRequested,
            DeviceNotProvisioned,
            PolicyRefresh,
            InvalidPolicyKey,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }
}

/// A Ping response, in the element order of MS-ASCMD: Status, Folders, MaxFolders,
/// HeartbeatInterval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingResponse {
    pub status: PingStatus,
    pub folders: Vec<String>,
    pub max_folders: Option<u32>,
    pub heartbeat: Option<u32>,
}

impl PingResponse {
    fn bare(status: PingStatus) -> Self {
        PingResponse {
            status,
            folders: Vec::new(),
            max_folders: None,
            heartbeat: None,
        }
    }
    /// Status 1.
    pub fn expired() -> Self {
        Self::bare(PingStatus::Expired)
    }
    /// Status 2 listing the changed folders' ServerIds.
    pub fn changes(folders: Vec<String>) -> Self {
        PingResponse {
            folders,
            ..Self::bare(PingStatus::Changes)
        }
    }
    /// Status 3.
    pub fn missing_parameters() -> Self {
        Self::bare(PingStatus::MissingParameters)
    }
    /// Status 4.
    pub fn syntax_error() -> Self {
        Self::bare(PingStatus::SyntaxError)
    }
    /// Status 5 with the bound the request violated.
    pub fn bad_heartbeat(bound: u32) -> Self {
        PingResponse {
            heartbeat: Some(bound),
            ..Self::bare(PingStatus::InvalidHeartbeat)
        }
    }
    /// Status 6 with the most folders allowed.
    pub fn too_many_folders(max: usize) -> Self {
        PingResponse {
            max_folders: Some(u32::try_from(max).unwrap_or(u32::MAX)),
            ..Self::bare(PingStatus::TooManyFolders)
        }
    }
    /// Status 7.
    pub fn folder_sync_required() -> Self {
        Self::bare(PingStatus::FolderSyncRequired)
    }
    /// Status 8.
    pub fn server_error() -> Self {
        Self::bare(PingStatus::ServerError)
    }
    /// A status with nothing else: the global ones (140, 142-144) relayed from the upstream.
    pub fn status(status: PingStatus) -> Self {
        Self::bare(status)
    }

    pub fn to_element(&self) -> Element {
        let mut ping = Element::new(PAGE, tag::PING).child(Element::with_text(
            PAGE,
            tag::STATUS,
            self.status.code().to_string(),
        ));
        if !self.folders.is_empty() {
            let mut list = Element::new(PAGE, tag::FOLDERS);
            for id in &self.folders {
                list = list.child(Element::with_text(PAGE, tag::FOLDER, id.as_str()));
            }
            ping = ping.child(list);
        }
        if let Some(max) = self.max_folders {
            ping = ping.child(Element::with_text(PAGE, tag::MAX_FOLDERS, max.to_string()));
        }
        if let Some(seconds) = self.heartbeat {
            ping = ping.child(Element::with_text(
                PAGE,
                tag::HEARTBEAT_INTERVAL,
                seconds.to_string(),
            ));
        }
        ping
    }

    /// The response body. Folder Ids come from parsed requests, which cannot hold NUL; one
    /// that does anyway is left out rather than corrupting the document.
    pub fn encode(&self) -> Vec<u8> {
        match wbxml::encode(&self.to_element()) {
            Ok(bytes) => bytes,
            Err(_) => {
                let mut clean = self.clone();
                clean.folders.retain(|id| !id.contains('\0'));
                wbxml::encode(&clean.to_element()).unwrap_or_default()
            }
        }
    }

    /// Parses a response, as a device (or our load test) reads it.
    pub fn parse(body: &[u8]) -> Result<Self, PingError> {
        let root = wbxml::decode_with(body, BODY_LIMITS)?;
        if (root.page, root.token) != (PAGE, tag::PING) {
            return Err(PingError::NotPing);
        }
        let mut status = None;
        let mut response = Self::bare(PingStatus::ServerError);
        for child in root.elements() {
            let text = || child.text().unwrap_or_default();
            match (child.page, child.token) {
                (PAGE, tag::STATUS) => {
                    status = text().parse().ok().and_then(PingStatus::from_code);
                }
                (PAGE, tag::FOLDERS) => {
                    response.folders = child.elements().filter_map(Element::text).collect();
                }
                (PAGE, tag::MAX_FOLDERS) => response.max_folders = text().parse().ok(),
                (PAGE, tag::HEARTBEAT_INTERVAL) => response.heartbeat = text().parse().ok(),
                _ => return Err(PingError::Unexpected(describe(child))),
            }
        }
        response.status = status.ok_or(PingError::Unexpected("missing Status".into()))?;
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_REQUEST: [u8; 32] = [
        0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x48, 0x03, 0x38, 0x30, 0x00, 0x01, 0x49, 0x4a,
        0x4b, 0x03, 0x35, 0x00, 0x01, 0x4c, 0x03, 0x45, 0x6d, 0x61, 0x69, 0x6c, 0x00, 0x01, 0x01,
        0x01, 0x01,
    ];
    const SPEC_STATUS_1: [u8; 13] = [
        0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x47, 0x03, 0x31, 0x00, 0x01, 0x01,
    ];

    fn folder(id: &str) -> PingFolder {
        PingFolder {
            id: id.into(),
            class: FolderClass::Email,
        }
    }

    #[test]
    fn spec_request_parses_and_encodes_byte_exact() {
        let request = PingRequest::parse(&SPEC_REQUEST).expect("parses");
        assert_eq!(
            request,
            PingRequest {
                heartbeat: Some(80),
                folders: Some(vec![folder("5")]),
            }
        );
        assert_eq!(request.encode().expect("encodes"), SPEC_REQUEST);
    }

    #[test]
    fn status_1_is_byte_exact() {
        assert_eq!(PingResponse::expired().encode(), SPEC_STATUS_1);
    }

    #[test]
    fn responses_keep_the_spec_order() {
        let two = PingResponse::changes(vec!["5".into(), "7".into()]);
        let bytes = two.encode();
        assert_eq!(
            bytes,
            [
                0x03, 0x01, 0x6a, 0x00, 0x00, 0x0d, 0x45, 0x47, 0x03, b'2', 0x00, 0x01, 0x49, 0x4a,
                0x03, b'5', 0x00, 0x01, 0x4a, 0x03, b'7', 0x00, 0x01, 0x01, 0x01
            ]
        );
        assert_eq!(PingResponse::parse(&bytes).expect("parses"), two);
        let five = PingResponse::bad_heartbeat(60).encode();
        assert_eq!(
            &five[6..],
            [0x45, 0x47, 0x03, b'5', 0x00, 0x01, 0x48, 0x03, b'6', b'0', 0x00, 0x01, 0x01]
        );
        let six = PingResponse::too_many_folders(300).encode();
        assert_eq!(
            &six[6..],
            [0x45, 0x47, 0x03, b'6', 0x00, 0x01, 0x4d, 0x03, b'3', b'0', b'0', 0x00, 0x01, 0x01]
        );
        for status in 1..=8 {
            let status = PingStatus::from_code(status).expect("defined");
            let response = PingResponse {
                status,
                ..PingResponse::expired()
            };
            assert_eq!(PingResponse::parse(&response.encode()), Ok(response));
        }
    }

    #[test]
    fn empty_body_and_partial_bodies() {
        assert_eq!(PingRequest::parse(&[]), Ok(PingRequest::default()));
        let only_heartbeat = PingRequest {
            heartbeat: Some(300),
            folders: None,
        };
        let bytes = only_heartbeat.encode().expect("encodes");
        assert_eq!(PingRequest::parse(&bytes), Ok(only_heartbeat));
        assert_eq!(PingRequest::default().encode(), Ok(Vec::new()));
    }

    fn parse_tree(tree: Element) -> Result<PingRequest, PingError> {
        PingRequest::parse(&wbxml::encode(&tree).expect("encodes"))
    }

    fn folder_element(id: &str, class: &str) -> Element {
        Element::new(PAGE, tag::FOLDER)
            .child(Element::with_text(PAGE, tag::ID, id))
            .child(Element::with_text(PAGE, tag::CLASS, class))
    }

    #[test]
    fn each_defect_is_a_syntax_error_with_its_reason() {
        let ping = || Element::new(PAGE, tag::PING);
        let folders = |items: Vec<Element>| {
            items
                .into_iter()
                .fold(Element::new(PAGE, tag::FOLDERS), Element::child)
        };
        let hb = |text: &str| Element::with_text(PAGE, tag::HEARTBEAT_INTERVAL, text);
        let long = "x".repeat(MAX_FOLDER_ID + 1);
        let cases = [
            (ping(), PingError::Bare),
            (
                ping().child(folders(vec![
                    folder_element("1", "Email"),
                    folder_element("1", "Tasks"),
                ])),
                PingError::DuplicateFolder("1".into()),
            ),
            (
                ping().child(folders(vec![folder_element("1", "Mail")])),
                PingError::UnknownClass("Mail".into()),
            ),
            (
                ping().child(folders(vec![folder_element(&long, "Email")])),
                PingError::BadFolderId,
            ),
            (
                ping().child(hb("eighty")),
                PingError::BadHeartbeat("eighty".into()),
            ),
            (ping().child(hb("-5")), PingError::BadHeartbeat("-5".into())),
            (
                ping().child(hb("99999999999")),
                PingError::BadHeartbeat("99999999999".into()),
            ),
            (
                ping().child(hb("60")).child(hb("60")),
                PingError::Repeated("HeartbeatInterval"),
            ),
            (ping().child(folders(vec![])), PingError::NoFolder),
            (Element::new(0, 0x05).child(hb("60")), PingError::NotPing),
            (
                ping()
                    .child(folders(vec![Element::new(PAGE, tag::FOLDER)
                        .child(Element::with_text(PAGE, tag::ID, "1"))])),
                PingError::FolderWithout("Class"),
            ),
        ];
        for (tree, expected) in cases {
            assert_eq!(parse_tree(tree), Err(expected));
        }
        let exactly_64 = "y".repeat(MAX_FOLDER_ID);
        let ok = parse_tree(ping().child(folders(vec![folder_element(&exactly_64, "Notes")])));
        assert!(ok.is_ok(), "64 characters is allowed");
        assert!(matches!(
            PingRequest::parse(&[0x03, 0x01]),
            Err(PingError::Wbxml(_))
        ));
    }

    #[test]
    fn limits_map_to_statuses_5_and_6() {
        let limits = PingLimits::default();
        let request = |heartbeat, n: usize| PingRequest {
            heartbeat: Some(heartbeat),
            folders: Some((0..n).map(|i| folder(&i.to_string())).collect()),
        };
        assert_eq!(
            request(59, 1).check(&limits),
            Err(PingResponse::bad_heartbeat(60))
        );
        assert_eq!(
            request(3541, 1).check(&limits),
            Err(PingResponse::bad_heartbeat(3540))
        );
        assert_eq!(
            request(60, 301).check(&limits),
            Err(PingResponse::too_many_folders(300))
        );
        assert_eq!(request(3540, 300).check(&limits), Ok(()));
    }
}
