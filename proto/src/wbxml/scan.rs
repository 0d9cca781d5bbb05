//! A streaming WBXML scanner: bytes in as they pass, tag events out, constant memory.
//!
//! The proxy reads FolderSync and Sync bodies on their way to and from the upstream server.
//! Those bodies may be tens of megabytes (mail bodies and attachments travel as opaque data), so
//! they are never buffered: the scanner keeps the open elements and one short string, skips
//! long strings and opaque data, and hands a [`Sink`] the path of every element it opens, ends
//! or finds text in. Anything it does not understand stops the scan (never the traffic).

use super::token;

/// An element's tag: (code page, token).
pub type Tag = (u8, u8);

/// Deepest nesting scanned; EAS documents stay well under 20.
const MAX_DEPTH: usize = 64;

/// Strings and opaque data longer than this are skipped: ids, keys, names and statuses are short.
pub const MAX_TEXT: usize = 1024;

/// What a scan tells its consumer. `path` runs from the root to the element concerned.
pub trait Sink {
    fn start(&mut self, _path: &[Tag]) {}
    fn text(&mut self, _path: &[Tag], _text: &str) {}
    fn end(&mut self, _path: &[Tag]) {}
}

/// Why a scan stopped early.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("not a WBXML 1.x document with public id 1, UTF-8 and no string table")]
    Header,
    #[error("token {0:#04x} is not used by ActiveSync")]
    Token(u8),
    #[error("elements nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("END with no open element")]
    Unbalanced,
    #[error("bad multi-byte integer")]
    MultiByte,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Header fields: version, then three multi-byte integers (public id, charset, table).
    Header(u8),
    Token,
    SwitchPage,
    /// Inside an inline string; `skipping` once it outgrew MAX_TEXT.
    Str {
        skipping: bool,
    },
    /// Reading an opaque length (ENTITY shares the integer format and is discarded).
    OpaqueLength {
        entity: bool,
    },
    Opaque {
        left: u32,
        skipping: bool,
    },
    Done,
    Failed,
}

pub struct Scanner {
    state: State,
    page: u8,
    path: Vec<Tag>,
    text: Vec<u8>,
    int: u32,
    int_bytes: u8,
    error: Option<ScanError>,
    /// Whether the root element was seen and closed.
    complete: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            state: State::Header(0),
            page: 0,
            path: Vec::new(),
            text: Vec::new(),
            int: 0,
            int_bytes: 0,
            error: None,
            complete: false,
        }
    }
}

impl Scanner {
    /// The reason the scan stopped, if it did.
    pub fn error(&self) -> Option<&ScanError> {
        self.error.as_ref()
    }

    /// Whether the whole document was read: the root closed and nothing went wrong.
    pub fn complete(&self) -> bool {
        self.complete && self.error.is_none()
    }

    fn fail(&mut self, error: ScanError) {
        self.state = State::Failed;
        self.error = Some(error);
    }

    /// Accumulates one byte of a multi-byte integer; `Some` when it is whole.
    fn mb_u_int32(&mut self, byte: u8) -> Result<Option<u32>, ScanError> {
        self.int_bytes += 1;
        if self.int_bytes > 5 || self.int > (u32::MAX >> 7) {
            return Err(ScanError::MultiByte);
        }
        self.int = (self.int << 7) | u32::from(byte & 0x7F);
        if byte & 0x80 != 0 {
            return Ok(None);
        }
        let value = self.int;
        self.int = 0;
        self.int_bytes = 0;
        Ok(Some(value))
    }

    /// Scans the next piece of the document.
    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut impl Sink) {
        while let Some((&byte, rest)) = bytes.split_first() {
            match self.state {
                State::Done | State::Failed => return,
                // Skip the bulk of long opaque data in one step.
                State::Opaque { left, skipping } if skipping => {
                    let n = (left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u32;
                    self.state = if left == 0 {
                        State::Token
                    } else {
                        State::Opaque { left, skipping }
                    };
                    continue;
                }
                _ => {}
            }
            bytes = rest;
            if let Err(error) = self.step(byte, sink) {
                self.fail(error);
                return;
            }
        }
    }

    fn step(&mut self, byte: u8, sink: &mut impl Sink) -> Result<(), ScanError> {
        match self.state {
            State::Header(0) => {
                if byte > 0x03 {
                    return Err(ScanError::Header);
                }
                self.state = State::Header(1);
            }
            State::Header(field) => {
                if let Some(value) = self.mb_u_int32(byte)? {
                    let expected = [1, 106, 0][usize::from(field - 1)];
                    if value != expected {
                        return Err(ScanError::Header);
                    }
                    self.state = if field == 3 {
                        State::Token
                    } else {
                        State::Header(field + 1)
                    };
                }
            }
            State::Token => self.token(byte, sink)?,
            State::SwitchPage => {
                self.page = byte;
                self.state = State::Token;
            }
            State::Str { skipping } => {
                if byte == 0 {
                    if !skipping {
                        self.emit_text(sink);
                    }
                    self.text.clear();
                    self.state = State::Token;
                } else if !skipping {
                    if self.text.len() == MAX_TEXT {
                        self.text.clear();
                        self.state = State::Str { skipping: true };
                    } else {
                        self.text.push(byte);
                    }
                }
            }
            State::OpaqueLength { entity } => {
                if let Some(len) = self.mb_u_int32(byte)? {
                    self.state = if entity || len == 0 {
                        State::Token
                    } else {
                        State::Opaque {
                            left: len,
                            skipping: len as usize > MAX_TEXT,
                        }
                    };
                }
            }
            State::Opaque { left, .. } => {
                self.text.push(byte);
                if left == 1 {
                    self.emit_text(sink);
                    self.text.clear();
                    self.state = State::Token;
                } else {
                    self.state = State::Opaque {
                        left: left - 1,
                        skipping: false,
                    };
                }
            }
            State::Done | State::Failed => {}
        }
        Ok(())
    }

    fn token(&mut self, byte: u8, sink: &mut impl Sink) -> Result<(), ScanError> {
        match byte {
            token::SWITCH_PAGE => self.state = State::SwitchPage,
            token::END => {
                if self.path.is_empty() {
                    return Err(ScanError::Unbalanced);
                }
                sink.end(&self.path);
                self.path.pop();
                if self.path.is_empty() {
                    self.complete = true;
                    self.state = State::Done;
                }
            }
            token::STR_I => self.state = State::Str { skipping: false },
            token::OPAQUE => self.state = State::OpaqueLength { entity: false },
            0x02 => self.state = State::OpaqueLength { entity: true },
            b if b & token::ATTRIBUTES != 0 || b & 0x3F < token::FIRST_TAG => {
                return Err(ScanError::Token(b));
            }
            b => {
                if self.path.len() == MAX_DEPTH {
                    return Err(ScanError::TooDeep);
                }
                self.path.push((self.page, b & 0x3F));
                sink.start(&self.path);
                if b & token::CONTENT == 0 {
                    sink.end(&self.path);
                    self.path.pop();
                    if self.path.is_empty() {
                        self.complete = true;
                        self.state = State::Done;
                    }
                }
            }
        }
        Ok(())
    }

    fn emit_text(&self, sink: &mut impl Sink) {
        if self.path.is_empty() {
            return;
        }
        if let Ok(text) = std::str::from_utf8(&self.text) {
            sink.text(&self.path, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbxml::{encode, Element, Node};

    #[derive(Default)]
    struct Record(Vec<String>);

    impl Sink for Record {
        fn start(&mut self, path: &[Tag]) {
            self.0.push(format!("<{:?}", path.last()));
        }
        fn text(&mut self, path: &[Tag], text: &str) {
            self.0.push(format!("{}:{text}", path.len()));
        }
        fn end(&mut self, path: &[Tag]) {
            self.0.push(format!(">{:?}", path.last()));
        }
    }

    fn document() -> Vec<u8> {
        let mut data = Element::new(0, 0x1D);
        data.children.push(Node::Opaque(vec![7; 5000]));
        data.children.push(Node::Opaque(b"short".to_vec()));
        let root = Element::new(0, 0x05)
            .child(Element::with_text(0, 0x0B, "key-1"))
            .child(Element::new(0, 0x26))
            .child(Element::with_text(7, 0x07, "x".repeat(3000)))
            .child(data)
            .child(Element::with_text(0, 0x0E, "1"));
        encode(&root).expect("encodes")
    }

    #[test]
    fn any_split_of_the_bytes_scans_alike() {
        let bytes = document();
        let mut whole = Record::default();
        let mut scanner = Scanner::default();
        scanner.feed(&bytes, &mut whole);
        assert!(scanner.complete(), "{:?}", scanner.error());
        assert!(whole.0.contains(&"2:key-1".to_owned()));
        assert!(whole.0.contains(&"2:short".to_owned()));
        assert!(
            !whole.0.iter().any(|e| e.contains("xxx")),
            "long strings skipped"
        );
        for size in [1, 2, 3, 7, 64, 1000] {
            let mut pieces = Record::default();
            let mut scanner = Scanner::default();
            for chunk in bytes.chunks(size) {
                scanner.feed(chunk, &mut pieces);
            }
            assert!(scanner.complete());
            assert_eq!(pieces.0, whole.0, "chunks of {size}");
        }
    }

    #[test]
    fn garbage_stops_the_scan_without_panicking() {
        for bad in [
            &b"\x09\x01"[..],
            b"\x03\x01\x6a\x00\x01",
            b"\x03\x01\x6a\x00\x85",
        ] {
            let mut scanner = Scanner::default();
            scanner.feed(bad, &mut Record::default());
            assert!(scanner.error().is_some(), "{bad:?}");
            assert!(!scanner.complete());
        }
        let mut scanner = Scanner::default();
        scanner.feed(&document()[..20], &mut Record::default());
        assert!(!scanner.complete(), "a truncated document is not complete");
        let deep: Vec<u8> = [0x03, 0x01, 0x6a, 0x00]
            .into_iter()
            .chain(std::iter::repeat_n(0x45, 100))
            .collect();
        let mut scanner = Scanner::default();
        scanner.feed(&deep, &mut Record::default());
        assert_eq!(scanner.error(), Some(&ScanError::TooDeep));
    }
}
