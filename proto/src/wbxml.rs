//! WBXML 1.3 as Exchange ActiveSync uses it (MS-ASWBXML): no string table, no attributes, UTF-8,
//! tags from the EAS code pages only.
//!
//! The tree is deliberately small: an element is (code page, token, children), and a child is an
//! element, an inline string or opaque bytes. [`decode`] and [`encode`] convert between bytes and
//! tree; [`xml`] converts between tree and the XML dialect libwbxml prints.

mod codepages;
mod decode;
mod encode;
pub mod scan;
pub mod xml;

pub use codepages::{CodePage, CODE_PAGES};
pub use decode::{decode, decode_with, DecodeError, DecodeErrorKind, Limits};
pub use encode::{encode, EncodeError};

/// The header every EAS document starts with: WBXML 1.3, public id 1 (unknown), UTF-8 (MIBenum
/// 106), empty string table.
pub const HEADER: [u8; 4] = [0x03, 0x01, 0x6A, 0x00];

/// Global tokens (WBXML 1.3 section 7.1) that EAS uses.
pub(crate) mod token {
    pub const SWITCH_PAGE: u8 = 0x00;
    pub const END: u8 = 0x01;
    pub const STR_I: u8 = 0x03;
    pub const OPAQUE: u8 = 0xC3;
    /// Set on a tag byte when the element has content.
    pub const CONTENT: u8 = 0x40;
    /// Set on a tag byte when the element has attributes (never in EAS).
    pub const ATTRIBUTES: u8 = 0x80;
    /// The lowest token a tag can have; 0x00-0x04 are global tokens.
    pub const FIRST_TAG: u8 = 0x05;
}

/// An element: a tag of one code page and its content, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub page: u8,
    pub token: u8,
    pub children: Vec<Node>,
}

/// One piece of an element's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
    Opaque(Vec<u8>),
}

impl Element {
    /// An element with no content.
    pub fn new(page: u8, token: u8) -> Self {
        Element {
            page,
            token,
            children: Vec::new(),
        }
    }

    /// An element whose content is one inline string.
    pub fn with_text(page: u8, token: u8, text: impl Into<String>) -> Self {
        Element {
            page,
            token,
            children: vec![Node::Text(text.into())],
        }
    }

    /// Appends a child element; returns self so trees read top-down in code.
    pub fn child(mut self, element: Element) -> Self {
        self.children.push(Node::Element(element));
        self
    }

    /// The child elements, skipping strings and opaque data.
    pub fn elements(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|node| match node {
            Node::Element(element) => Some(element),
            _ => None,
        })
    }

    /// The element's text when its content is strings only (concatenated); `None` when it holds
    /// an element or opaque data.
    pub fn text(&self) -> Option<String> {
        let mut text = String::new();
        for node in &self.children {
            match node {
                Node::Text(part) => text.push_str(part),
                _ => return None,
            }
        }
        Some(text)
    }

    /// The tag's name from the code page tables, or `None` for a token no page defines.
    pub fn name(&self) -> Option<&'static str> {
        tag_name(self.page, self.token)
    }
}

/// The code page with this number, if EAS defines it.
pub fn code_page(number: u8) -> Option<&'static CodePage> {
    CODE_PAGES.get(usize::from(number))
}

/// The code page with this namespace name (`"Ping"`, `"AirSyncBase"`, ...), ignoring ASCII case.
pub fn code_page_named(name: &str) -> Option<&'static CodePage> {
    CODE_PAGES
        .iter()
        .find(|page| page.name.eq_ignore_ascii_case(name))
}

/// The name of a tag, if the page defines the token.
pub fn tag_name(page: u8, token: u8) -> Option<&'static str> {
    let tags = code_page(page)?.tags;
    tags.binary_search_by_key(&token, |&(t, _)| t)
        .ok()
        .map(|i| tags[i].1)
}

/// The token of a tag on a page, by exact name.
pub fn tag_token(page: u8, name: &str) -> Option<u8> {
    code_page(page)?
        .tags
        .iter()
        .find(|&&(_, n)| n == name)
        .map(|&(t, _)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_at_its_index_and_sorted() {
        for (i, page) in CODE_PAGES.iter().enumerate() {
            assert_eq!(usize::from(page.number), i, "page {}", page.name);
            assert!(
                page.tags.windows(2).all(|w| w[0].0 < w[1].0),
                "{}",
                page.name
            );
            assert!(page.tags.iter().all(|&(t, _)| (0x05..=0x3F).contains(&t)));
        }
        assert_eq!(CODE_PAGES.len(), 26, "pages 0 AirSync to 25 Find");
    }

    #[test]
    fn names_resolve_both_ways() {
        assert_eq!(tag_name(13, 0x08), Some("HeartbeatInterval"));
        assert_eq!(tag_token(7, "FolderSync"), Some(0x16));
        assert_eq!(code_page_named("find").map(|p| p.number), Some(25));
        assert_eq!(tag_name(13, 0x3F), None);
        assert_eq!(tag_name(26, 0x05), None);
    }
}
