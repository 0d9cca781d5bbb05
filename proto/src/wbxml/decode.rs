//! Bytes to tree. Iterative (no recursion), bounded in depth and size, and every failure names the
//! byte offset where the input stopped making sense.

use super::{code_page, tag_name, token, Element, Node};

/// Bounds on what the decoder accepts, so hostile input cannot make it allocate without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest document accepted, in bytes.
    pub max_len: usize,
    /// Deepest element nesting accepted (the root is depth 1).
    pub max_depth: usize,
}

impl Default for Limits {
    /// Generous for any EAS request body: 1 MiB, 32 levels (real documents stay under 10).
    fn default() -> Self {
        Limits {
            max_len: 1 << 20,
            max_depth: 32,
        }
    }
}

/// Why and where decoding failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid WBXML at byte {offset}: {kind}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: DecodeErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeErrorKind {
    #[error("document ends too early")]
    Truncated,
    #[error("document of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("WBXML version byte {0:#04x} is not 1.0-1.3")]
    UnsupportedVersion(u8),
    #[error("public identifier {0} is not 1 (unknown), as EAS sends")]
    UnsupportedPublicId(u32),
    #[error("charset MIBenum {0} is not 106 (UTF-8)")]
    UnsupportedCharset(u32),
    #[error("string table of {0} bytes: EAS documents have none")]
    StringTable(u32),
    #[error("multi-byte integer longer than 5 bytes or over 32 bits")]
    BadMultiByteInt,
    #[error("code page {0} is not an EAS code page")]
    UnknownCodePage(u8),
    #[error("token {token:#04x} is not defined on code page {page}")]
    UnknownTag { page: u8, token: u8 },
    #[error("token {0:#04x} is not used in EAS (attributes, entities, extensions, string table)")]
    UnsupportedToken(u8),
    #[error("inline string is not valid UTF-8")]
    InvalidUtf8,
    #[error("elements nested deeper than {0}")]
    TooDeep(usize),
    #[error("END with no open element")]
    UnexpectedEnd,
    #[error("string or opaque data outside any element")]
    ContentOutsideRoot,
    #[error("{0} bytes after the end of the root element")]
    TrailingData(usize),
}

/// Decodes a document with the default [`Limits`].
pub fn decode(bytes: &[u8]) -> Result<Element, DecodeError> {
    decode_with(bytes, Limits::default())
}

/// Decodes a document, refusing anything outside `limits`.
pub fn decode_with(bytes: &[u8], limits: Limits) -> Result<Element, DecodeError> {
    if bytes.len() > limits.max_len {
        return Err(DecodeError {
            offset: limits.max_len,
            kind: DecodeErrorKind::TooLarge {
                len: bytes.len(),
                limit: limits.max_len,
            },
        });
    }
    let mut reader = Reader { bytes, pos: 0 };
    reader.header()?;
    reader.body(limits.max_depth)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, offset: usize, kind: DecodeErrorKind) -> Result<T, DecodeError> {
        Err(DecodeError { offset, kind })
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        match self.bytes.get(self.pos) {
            Some(&b) => {
                self.pos += 1;
                Ok(b)
            }
            None => self.fail(self.pos, DecodeErrorKind::Truncated),
        }
    }

    /// WBXML's mb_u_int32: big-endian groups of 7 bits, high bit set on all but the last byte.
    fn mb_u_int32(&mut self) -> Result<u32, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        for _ in 0..5 {
            let b = self.byte()?;
            value = (value << 7) | u64::from(b & 0x7F);
            if b & 0x80 == 0 {
                return u32::try_from(value)
                    .or_else(|_| self.fail(start, DecodeErrorKind::BadMultiByteInt));
            }
        }
        self.fail(start, DecodeErrorKind::BadMultiByteInt)
    }

    fn header(&mut self) -> Result<(), DecodeError> {
        let version = self.byte()?;
        if !(0x00..=0x03).contains(&version) {
            return self.fail(0, DecodeErrorKind::UnsupportedVersion(version));
        }
        let at = self.pos;
        let public_id = self.mb_u_int32()?;
        if public_id != 1 {
            return self.fail(at, DecodeErrorKind::UnsupportedPublicId(public_id));
        }
        let at = self.pos;
        let charset = self.mb_u_int32()?;
        if charset != 106 {
            return self.fail(at, DecodeErrorKind::UnsupportedCharset(charset));
        }
        let at = self.pos;
        let table = self.mb_u_int32()?;
        if table != 0 {
            return self.fail(at, DecodeErrorKind::StringTable(table));
        }
        Ok(())
    }

    fn inline_string(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = &self.bytes[start..];
        let Some(len) = rest.iter().position(|&b| b == 0) else {
            return self.fail(self.bytes.len(), DecodeErrorKind::Truncated);
        };
        self.pos = start + len + 1;
        match std::str::from_utf8(&rest[..len]) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => self.fail(start + e.valid_up_to(), DecodeErrorKind::InvalidUtf8),
        }
    }

    fn opaque(&mut self) -> Result<Vec<u8>, DecodeError> {
        let len = self.mb_u_int32()? as usize;
        let start = self.pos;
        if self.bytes.len() - start < len {
            return self.fail(self.bytes.len(), DecodeErrorKind::Truncated);
        }
        self.pos += len;
        Ok(self.bytes[start..start + len].to_vec())
    }

    /// The element tree. `open` holds the elements whose END has not come yet; a finished element
    /// goes into its parent, and the document ends when the root finishes.
    fn body(&mut self, max_depth: usize) -> Result<Element, DecodeError> {
        let mut page = 0u8;
        let mut open: Vec<Element> = Vec::new();
        loop {
            let offset = self.pos;
            let b = self.byte()?;
            let finished = match b {
                token::SWITCH_PAGE => {
                    let number = self.byte()?;
                    if code_page(number).is_none() {
                        return self.fail(offset + 1, DecodeErrorKind::UnknownCodePage(number));
                    }
                    page = number;
                    None
                }
                token::END => match open.pop() {
                    Some(element) => Some(element),
                    None => return self.fail(offset, DecodeErrorKind::UnexpectedEnd),
                },
                token::STR_I | token::OPAQUE => {
                    let node = if b == token::STR_I {
                        Node::Text(self.inline_string()?)
                    } else {
                        Node::Opaque(self.opaque()?)
                    };
                    match open.last_mut() {
                        Some(parent) => parent.children.push(node),
                        None => return self.fail(offset, DecodeErrorKind::ContentOutsideRoot),
                    }
                    None
                }
                b if b & token::ATTRIBUTES == 0 && b & 0x3F >= token::FIRST_TAG => {
                    let tag = b & 0x3F;
                    if tag_name(page, tag).is_none() {
                        return self.fail(offset, DecodeErrorKind::UnknownTag { page, token: tag });
                    }
                    let element = Element::new(page, tag);
                    if b & token::CONTENT != 0 {
                        if open.len() >= max_depth {
                            return self.fail(offset, DecodeErrorKind::TooDeep(max_depth));
                        }
                        open.push(element);
                        None
                    } else {
                        Some(element)
                    }
                }
                other => return self.fail(offset, DecodeErrorKind::UnsupportedToken(other)),
            };
            if let Some(element) = finished {
                match open.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => {
                        let trailing = self.bytes.len() - self.pos;
                        if trailing != 0 {
                            return self.fail(self.pos, DecodeErrorKind::TrailingData(trailing));
                        }
                        return Ok(element);
                    }
                }
            }
        }
    }
}
