//! Tree to bytes, in the canonical form EAS peers send: the fixed header, SWITCH_PAGE only when
//! the page changes, the content bit exactly when an element has children.

use super::{token, Element, Node, HEADER};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("token {token:#04x} on page {page} is not a tag token (0x05-0x3F)")]
    BadToken { page: u8, token: u8 },
    #[error("inline string holds a NUL byte, which WBXML cannot carry in STR_I")]
    NulInString,
    #[error("opaque data of {0} bytes is over 4 GiB")]
    OpaqueTooLong(usize),
}

/// Encodes a document.
pub fn encode(root: &Element) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&HEADER);
    let mut page = 0u8;
    // An explicit stack of child iterators: documents from outside can be deep, and recursion
    // would tie the depth we can encode to the thread's stack.
    let mut stack: Vec<std::slice::Iter<'_, Node>> = Vec::new();
    start_element(&mut out, &mut page, root)?;
    if !root.children.is_empty() {
        stack.push(root.children.iter());
    }
    while let Some(children) = stack.last_mut() {
        match children.next() {
            None => {
                out.push(token::END);
                stack.pop();
            }
            Some(Node::Text(text)) => {
                if text.as_bytes().contains(&0) {
                    return Err(EncodeError::NulInString);
                }
                out.push(token::STR_I);
                out.extend_from_slice(text.as_bytes());
                out.push(0);
            }
            Some(Node::Opaque(bytes)) => {
                let len = u32::try_from(bytes.len())
                    .map_err(|_| EncodeError::OpaqueTooLong(bytes.len()))?;
                out.push(token::OPAQUE);
                put_mb_u_int32(&mut out, len);
                out.extend_from_slice(bytes);
            }
            Some(Node::Element(element)) => {
                start_element(&mut out, &mut page, element)?;
                if !element.children.is_empty() {
                    stack.push(element.children.iter());
                }
            }
        }
    }
    Ok(out)
}

fn start_element(out: &mut Vec<u8>, page: &mut u8, element: &Element) -> Result<(), EncodeError> {
    if !(token::FIRST_TAG..=0x3F).contains(&element.token) {
        return Err(EncodeError::BadToken {
            page: element.page,
            token: element.token,
        });
    }
    if element.page != *page {
        out.push(token::SWITCH_PAGE);
        out.push(element.page);
        *page = element.page;
    }
    let content = if element.children.is_empty() {
        0
    } else {
        token::CONTENT
    };
    out.push(element.token | content);
    Ok(())
}

fn put_mb_u_int32(out: &mut Vec<u8>, value: u32) {
    let mut groups = [0u8; 5];
    let mut n = 0;
    let mut v = value;
    loop {
        groups[n] = (v & 0x7F) as u8;
        n += 1;
        v >>= 7;
        if v == 0 {
            break;
        }
    }
    for i in (0..n).rev() {
        out.push(groups[i] | if i == 0 { 0 } else { 0x80 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wbxml::decode;

    #[test]
    fn opaque_lengths_use_multi_byte_integers() {
        for len in [0usize, 1, 127, 128, 300, 16_384] {
            let root = Element {
                page: 17,
                token: 0x0B,
                children: vec![Node::Opaque(vec![0xAB; len])],
            };
            let bytes = encode(&root).expect("encodes");
            assert_eq!(decode(&bytes).expect("decodes"), root, "length {len}");
        }
        let mut out = Vec::new();
        put_mb_u_int32(&mut out, 0xA0);
        assert_eq!(out, [0x81, 0x20], "the WBXML spec's example");
    }

    #[test]
    fn refuses_what_wbxml_cannot_say() {
        let nul = Element::with_text(13, 0x0B, "a\0b");
        assert_eq!(encode(&nul), Err(EncodeError::NulInString));
        assert!(matches!(
            encode(&Element::new(13, 0x04)),
            Err(EncodeError::BadToken { .. })
        ));
    }
}
