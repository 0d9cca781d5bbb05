//! The request line's query, in both forms MS-ASHTTP allows:
//! the plain form (`Cmd=Ping&User=u&DeviceId=d&DeviceType=t`, percent-encoded) and the base64 form
//! (protocol 12.1 and later), which packs version, command, locale, device and parameters into
//! one base64 string. Both parse into one [`EasRequest`].

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use percent_encoding::percent_decode_str;

/// EAS protocol versions (MS-ASHTTP 2.2.1.1.2.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V2_5,
    V12_0,
    V12_1,
    V14_0,
    V14_1,
    V16_0,
    V16_1,
}

impl ProtocolVersion {
    pub const ALL: [ProtocolVersion; 7] = [
        Self::V2_5,
        Self::V12_0,
        Self::V12_1,
        Self::V14_0,
        Self::V14_1,
        Self::V16_0,
        Self::V16_1,
    ];

    /// As in the `MS-ASProtocolVersion` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V2_5 => "2.5",
            Self::V12_0 => "12.0",
            Self::V12_1 => "12.1",
            Self::V14_0 => "14.0",
            Self::V14_1 => "14.1",
            Self::V16_0 => "16.0",
            Self::V16_1 => "16.1",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text.trim())
    }

    /// The version byte of the base64 form; versions before 12.1 have none.
    pub fn base64_byte(self) -> Option<u8> {
        match self {
            Self::V2_5 | Self::V12_0 => None,
            Self::V12_1 => Some(121),
            Self::V14_0 => Some(140),
            Self::V14_1 => Some(141),
            Self::V16_0 => Some(160),
            Self::V16_1 => Some(161),
        }
    }

    pub fn from_base64_byte(byte: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|v| v.base64_byte() == Some(byte))
    }
}

/// The commands with a base64 code (MS-ASHTTP 2.2.1.1.1.1.2); the plain form names the same ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Sync,
    SendMail,
    SmartForward,
    SmartReply,
    GetAttachment,
    FolderSync,
    FolderCreate,
    FolderDelete,
    FolderUpdate,
    MoveItems,
    GetItemEstimate,
    MeetingResponse,
    Search,
    Settings,
    Ping,
    ItemOperations,
    Provision,
    ResolveRecipients,
    ValidateCert,
    Find,
}

/// (command, base64 code, name): the one table both directions read.
const COMMANDS: [(Command, u8, &str); 20] = [
    (Command::Sync, 0, "Sync"),
    (Command::SendMail, 1, "SendMail"),
    (Command::SmartForward, 2, "SmartForward"),
    (Command::SmartReply, 3, "SmartReply"),
    (Command::GetAttachment, 4, "GetAttachment"),
    (Command::FolderSync, 9, "FolderSync"),
    (Command::FolderCreate, 10, "FolderCreate"),
    (Command::FolderDelete, 11, "FolderDelete"),
    (Command::FolderUpdate, 12, "FolderUpdate"),
    (Command::MoveItems, 13, "MoveItems"),
    (Command::GetItemEstimate, 14, "GetItemEstimate"),
    (Command::MeetingResponse, 15, "MeetingResponse"),
    (Command::Search, 16, "Search"),
    (Command::Settings, 17, "Settings"),
    (Command::Ping, 18, "Ping"),
    (Command::ItemOperations, 19, "ItemOperations"),
    (Command::Provision, 20, "Provision"),
    (Command::ResolveRecipients, 21, "ResolveRecipients"),
    (Command::ValidateCert, 22, "ValidateCert"),
    (Command::Find, 23, "Find"),
];

impl Command {
    /// The variants are declared in the table's order, so the discriminant indexes it.
    fn entry(self) -> (Command, u8, &'static str) {
        COMMANDS[self as usize]
    }
    pub fn code(self) -> u8 {
        self.entry().1
    }
    pub fn name(self) -> &'static str {
        self.entry().2
    }
    pub fn from_code(code: u8) -> Option<Self> {
        COMMANDS
            .into_iter()
            .find(|&(_, c, _)| c == code)
            .map(|e| e.0)
    }
    pub fn from_name(name: &str) -> Option<Self> {
        COMMANDS
            .into_iter()
            .find(|&(_, _, n)| n.eq_ignore_ascii_case(name))
            .map(|e| e.0)
    }
}

/// Command parameters of the base64 form (MS-ASHTTP 2.2.1.1.1.1.3), by tag.
const PARAMETERS: [(u8, &str); 7] = [
    (0, "AttachmentName"),
    (1, "CollectionId"),
    (3, "ItemId"),
    (4, "LongId"),
    (6, "Occurrence"),
    (7, "Options"),
    (8, "User"),
];

/// Which form the query came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryForm {
    Plain,
    Base64,
}

/// One request's query, whichever form it came in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EasRequest {
    pub form: QueryForm,
    pub command: Command,
    /// `User=`, or the base64 User parameter; absent means "the authenticated user".
    pub user: Option<String>,
    pub device_id: String,
    pub device_type: String,
    /// Only the base64 form carries these three; the plain form's version is a header.
    pub version: Option<ProtocolVersion>,
    pub locale: Option<u16>,
    pub policy_key: Option<u32>,
    /// Other parameters by their MS-ASHTTP names (`CollectionId`, `ItemId`, `Options`, ...).
    /// `Options` from the base64 form is its bitmask in decimal.
    pub params: Vec<(String, String)>,
}

/// Longest DeviceId, DeviceType or User accepted, in bytes. The base64 form caps them at 255;
/// real ones are under 64.
const MAX_FIELD: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("the query is empty")]
    Empty,
    #[error("no Cmd parameter, and the query is not a base64 request: {0}")]
    BadBase64(String),
    #[error("base64 request ends inside its {0}")]
    Truncated(&'static str),
    #[error("base64 request has a zero-length DeviceId")]
    EmptyDeviceId,
    #[error("base64 request has protocol version byte {0}, not 121, 140, 141, 160 or 161")]
    UnknownVersion(u8),
    #[error("base64 request has command code {0}, which MS-ASHTTP does not define")]
    UnknownCommandCode(u8),
    #[error("base64 request has a policy key of length {0}, not 0 or 4")]
    BadPolicyKeyLength(u8),
    #[error("base64 request has parameter tag {0}, which MS-ASHTTP does not define")]
    UnknownParameter(u8),
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    #[error("missing {0} parameter")]
    Missing(&'static str),
    #[error("parameter {0} appears twice")]
    Duplicate(String),
    #[error("{0} is not valid UTF-8 after percent-decoding")]
    InvalidUtf8(&'static str),
    #[error("{0} holds a control character")]
    ControlCharacter(&'static str),
    #[error("{0} is longer than {MAX_FIELD} bytes")]
    TooLong(&'static str),
}

impl EasRequest {
    /// Parses the part of the request target after `?`. Plain when it has a `Cmd=` parameter,
    /// base64 when it is a single component.
    pub fn parse_query(query: &str) -> Result<Self, QueryError> {
        if query.is_empty() {
            return Err(QueryError::Empty);
        }
        let has_cmd = query.split('&').any(|pair| {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            key.eq_ignore_ascii_case("Cmd")
        });
        if has_cmd {
            Self::parse_plain(query)
        } else {
            Self::parse_base64(query)
        }
    }

    fn parse_plain(query: &str) -> Result<Self, QueryError> {
        let mut command = None;
        let mut user = None;
        let mut device_id = None;
        let mut device_type = None;
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode_component(raw_key, "a parameter name")?;
            let slot = match key.to_ascii_lowercase().as_str() {
                "cmd" => &mut command,
                "user" => &mut user,
                "deviceid" => &mut device_id,
                "devicetype" => &mut device_type,
                _ => {
                    if params.iter().any(|(k, _)| k.eq_ignore_ascii_case(&key)) {
                        return Err(QueryError::Duplicate(key));
                    }
                    let value = decode_component(raw_value, "a parameter value")?;
                    params.push((key, value));
                    continue;
                }
            };
            if slot.is_some() {
                return Err(QueryError::Duplicate(key));
            }
            *slot = Some(raw_value);
        }
        let command_name = decode_component(command.ok_or(QueryError::Missing("Cmd"))?, "Cmd")?;
        let command =
            Command::from_name(&command_name).ok_or(QueryError::UnknownCommand(command_name))?;
        let device_id = decode_field(
            device_id.ok_or(QueryError::Missing("DeviceId"))?,
            "DeviceId",
        )?;
        if device_id.is_empty() {
            return Err(QueryError::Missing("DeviceId"));
        }
        let device_type = decode_field(
            device_type.ok_or(QueryError::Missing("DeviceType"))?,
            "DeviceType",
        )?;
        let user = user.map(|u| decode_field(u, "User")).transpose()?;
        Ok(EasRequest {
            form: QueryForm::Plain,
            command,
            user: user.filter(|u| !u.is_empty()),
            device_id,
            device_type,
            version: None,
            locale: None,
            policy_key: None,
            params,
        })
    }

    fn parse_base64(query: &str) -> Result<Self, QueryError> {
        // Some clients percent-encode the base64 string's `+`, `/` and `=`.
        let text = decode_component(query, "the base64 query")?;
        let bytes = lenient_base64()
            .decode(text.trim())
            .map_err(|e| QueryError::BadBase64(e.to_string()))?;
        let mut r = ByteReader { bytes: &bytes };
        let version_byte = r.byte("protocol version")?;
        let version = ProtocolVersion::from_base64_byte(version_byte)
            .ok_or(QueryError::UnknownVersion(version_byte))?;
        let code = r.byte("command code")?;
        let command = Command::from_code(code).ok_or(QueryError::UnknownCommandCode(code))?;
        let locale = u16::from_le_bytes([r.byte("locale")?, r.byte("locale")?]);
        let id_len = r.byte("DeviceId length")?;
        if id_len == 0 {
            return Err(QueryError::EmptyDeviceId);
        }
        let device_id = checked_text(r.take(id_len, "DeviceId")?, "DeviceId")?;
        let key_len = r.byte("policy key length")?;
        let policy_key = match key_len {
            0 => None,
            4 => {
                let key = r.take(4, "policy key")?;
                Some(u32::from_le_bytes([key[0], key[1], key[2], key[3]]))
            }
            other => return Err(QueryError::BadPolicyKeyLength(other)),
        };
        let type_len = r.byte("DeviceType length")?;
        let device_type = checked_text(r.take(type_len, "DeviceType")?, "DeviceType")?;
        let mut user = None;
        let mut params: Vec<(String, String)> = Vec::new();
        while !r.bytes.is_empty() {
            let tag = r.byte("parameter tag")?;
            let len = r.byte("parameter length")?;
            let value = r.take(len, "parameter value")?;
            let name = PARAMETERS
                .iter()
                .find(|&&(t, _)| t == tag)
                .map(|&(_, n)| n)
                .ok_or(QueryError::UnknownParameter(tag))?;
            let value = if tag == 7 {
                value.first().copied().unwrap_or(0).to_string()
            } else {
                checked_text(value, name)?
            };
            if name == "User" {
                if user.replace(value).is_some() {
                    return Err(QueryError::Duplicate("User".into()));
                }
            } else if params.iter().any(|(k, _)| k == name) {
                return Err(QueryError::Duplicate(name.into()));
            } else {
                params.push((name.to_owned(), value));
            }
        }
        Ok(EasRequest {
            form: QueryForm::Base64,
            command,
            user: user.filter(|u| !u.is_empty()),
            device_id,
            device_type,
            version: Some(version),
            locale: Some(locale),
            policy_key,
            params,
        })
    }

    /// The base64 form of this request (for tools and tests); `None` when a field does not fit
    /// (version before 12.1, a field over 255 bytes, a parameter the form cannot name).
    pub fn to_base64(&self) -> Option<String> {
        let version = self.version?.base64_byte()?;
        let mut out = vec![version, self.command.code()];
        out.extend_from_slice(&self.locale.unwrap_or(0x0409).to_le_bytes());
        push_field(&mut out, self.device_id.as_bytes())?;
        match self.policy_key {
            Some(key) => {
                out.push(4);
                out.extend_from_slice(&key.to_le_bytes());
            }
            None => out.push(0),
        }
        push_field(&mut out, self.device_type.as_bytes())?;
        if let Some(user) = &self.user {
            out.push(8);
            push_field(&mut out, user.as_bytes())?;
        }
        for (name, value) in &self.params {
            let &(tag, _) = PARAMETERS.iter().find(|(_, n)| n == name)?;
            out.push(tag);
            if tag == 7 {
                out.extend_from_slice(&[1, value.parse::<u8>().ok()?]);
            } else {
                push_field(&mut out, value.as_bytes())?;
            }
        }
        Some(base64::engine::general_purpose::STANDARD.encode(out))
    }
}

fn push_field(out: &mut Vec<u8>, bytes: &[u8]) -> Option<()> {
    out.push(u8::try_from(bytes.len()).ok()?);
    out.extend_from_slice(bytes);
    Some(())
}

fn lenient_base64() -> GeneralPurpose {
    GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Percent-decodes one query component. `+` stays `+`: EAS clients do not form-encode, and
/// mailboxes such as `alice+eas@example.com` are real.
fn decode_component(raw: &str, what: &'static str) -> Result<String, QueryError> {
    percent_decode_str(raw)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| QueryError::InvalidUtf8(what))
}

fn decode_field(raw: &str, what: &'static str) -> Result<String, QueryError> {
    let text = decode_component(raw, what)?;
    check_field(text, what)
}

fn checked_text(bytes: &[u8], what: &'static str) -> Result<String, QueryError> {
    let text = String::from_utf8(bytes.to_vec()).map_err(|_| QueryError::InvalidUtf8(what))?;
    check_field(text, what)
}

fn check_field(text: String, what: &'static str) -> Result<String, QueryError> {
    if text.len() > MAX_FIELD {
        return Err(QueryError::TooLong(what));
    }
    if text.chars().any(char::is_control) {
        return Err(QueryError::ControlCharacter(what));
    }
    Ok(text)
}

struct ByteReader<'a> {
    bytes: &'a [u8],
}

impl<'a> ByteReader<'a> {
    fn byte(&mut self, what: &'static str) -> Result<u8, QueryError> {
        Ok(self.take(1, what)?[0])
    }
    fn take(&mut self, len: u8, what: &'static str) -> Result<&'a [u8], QueryError> {
        let len = usize::from(len);
        if self.bytes.len() < len {
            return Err(QueryError::Truncated(what));
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::device_key;

    #[test]
    fn command_table_matches_variant_order() {
        for (i, &(command, _, _)) in COMMANDS.iter().enumerate() {
            assert_eq!(command as usize, i);
            assert_eq!(Command::from_code(command.code()), Some(command));
            assert_eq!(Command::from_name(command.name()), Some(command));
        }
    }

    #[test]
    fn the_two_spec_examples() {
        let sync = EasRequest::parse_query("jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l").expect("sync");
        assert_eq!(sync.form, QueryForm::Base64);
        assert_eq!(sync.command, Command::Sync);
        assert_eq!(sync.version, Some(ProtocolVersion::V14_0));
        assert_eq!(sync.locale, Some(0x0409));
        assert_eq!(sync.device_id, "v140Device");
        assert_eq!(sync.policy_key, None);
        assert_eq!(sync.device_type, "SmartPhone");
        assert!(sync.user.is_none() && sync.params.is_empty());

        let ping = EasRequest::parse_query("jRIJBAp2MTQwRGV2aWNlAApTbWFydFBob25l").expect("ping");
        assert_eq!(ping.command, Command::Ping);
        assert_eq!(ping.version, Some(ProtocolVersion::V14_1));
        assert_eq!(ping.device_id, sync.device_id);
    }

    #[test]
    fn one_device_one_key_in_both_forms() {
        let plain = EasRequest::parse_query(
            "Cmd=Ping&User=alice&DeviceId=v140Device&DeviceType=SmartPhone",
        )
        .expect("plain");
        let b64 = EasRequest::parse_query("jRIJBAp2MTQwRGV2aWNlAApTbWFydFBob25l").expect("b64");
        assert_eq!(plain.command, b64.command);
        assert_eq!(
            device_key("alice", &plain.device_id),
            device_key("alice", &b64.device_id)
        );
    }

    #[test]
    fn every_field_round_trips_through_base64() {
        let request = EasRequest {
            form: QueryForm::Base64,
            command: Command::SmartReply,
            user: Some("alice@example.com".into()),
            device_id: "Dev 1".into(),
            device_type: "iPhone".into(),
            version: Some(ProtocolVersion::V16_1),
            locale: Some(0x0407),
            policy_key: Some(0xDEADBEEF),
            params: vec![
                ("CollectionId".into(), "5".into()),
                ("ItemId".into(), "5:12".into()),
                ("Options".into(), "1".into()),
            ],
        };
        let text = request.to_base64().expect("encodes");
        assert_eq!(EasRequest::parse_query(&text), Ok(request));
    }

    #[test]
    fn plain_form_percent_decodes_and_keeps_plus() {
        let r = EasRequest::parse_query(
            "Cmd=Ping&User=alice%2Beas%40example.com&DeviceId=abc+1&DeviceType=Smart%20Phone",
        )
        .expect("parses");
        assert_eq!(r.user.as_deref(), Some("alice+eas@example.com"));
        assert_eq!(r.device_id, "abc+1");
        assert_eq!(r.device_type, "Smart Phone");
    }

    #[test]
    fn bad_inputs_say_what_is_wrong() {
        use QueryError::*;
        let cases: [(&str, QueryError); 12] = [
            ("", Empty),
            ("!!notbase64!!", BadBase64(String::new())),
            ("jRIJBAp2MTQw", Truncated("DeviceId")),
            ("jRIJBAB2", EmptyDeviceId),
            (
                "jWMJBAp2MTQwRGV2aWNlAApTbWFydFBob25l",
                UnknownCommandCode(99),
            ),
            ("ERIJBAp2MTQwRGV2aWNlAApTbWFydFBob25l", UnknownVersion(17)),
            ("Cmd=Ping&DeviceType=t", Missing("DeviceId")),
            ("Cmd=Ping&DeviceId=d", Missing("DeviceType")),
            (
                "Cmd=Frobnicate&DeviceId=d&DeviceType=t",
                UnknownCommand("Frobnicate".into()),
            ),
            (
                "Cmd=Ping&Cmd=Sync&DeviceId=d&DeviceType=t",
                Duplicate("Cmd".into()),
            ),
            (
                "Cmd=Ping&DeviceId=%FF&DeviceType=t",
                InvalidUtf8("DeviceId"),
            ),
            (
                "Cmd=Ping&DeviceId=a%0Ab&DeviceType=t",
                ControlCharacter("DeviceId"),
            ),
        ];
        for (query, expected) in cases {
            let got = EasRequest::parse_query(query).expect_err(query);
            match (&got, &expected) {
                (BadBase64(_), BadBase64(_)) => {}
                _ => assert_eq!(got, expected, "{query}"),
            }
            assert!(!got.to_string().is_empty());
        }
    }

    #[test]
    fn base64_with_percent_encoded_padding_and_policy_key() {
        let request = EasRequest {
            form: QueryForm::Base64,
            command: Command::Ping,
            user: None,
            device_id: "d".into(),
            device_type: "t".into(),
            version: Some(ProtocolVersion::V14_1),
            locale: Some(0x0409),
            policy_key: Some(7),
            params: vec![],
        };
        let text = request.to_base64().expect("encodes");
        let escaped = text
            .replace('=', "%3D")
            .replace('+', "%2B")
            .replace('/', "%2F");
        assert_eq!(EasRequest::parse_query(&escaped), Ok(request));
    }
}
