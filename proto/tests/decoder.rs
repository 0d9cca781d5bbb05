//! The decoder against hostile and random input: every failure names its offset and reason, no
//! input panics, and every tree we can build survives encode -> decode unchanged.

use dp_proto::wbxml::{
    decode, decode_with, encode, DecodeErrorKind, Element, Limits, Node, CODE_PAGES,
};
use proptest::prelude::*;

const HEADER: [u8; 4] = [0x03, 0x01, 0x6A, 0x00];

fn doc(body: &[u8]) -> Vec<u8> {
    let mut bytes = HEADER.to_vec();
    bytes.extend_from_slice(body);
    bytes
}

fn fails_at(bytes: &[u8], offset: usize, kind: DecodeErrorKind) {
    let err = decode(bytes).expect_err("must fail");
    assert_eq!((err.offset, &err.kind), (offset, &kind), "{err}");
    assert!(err.to_string().contains(&format!("byte {offset}")), "{err}");
}

#[test]
fn malformed_input_names_offset_and_reason() {
    use DecodeErrorKind::*;
    fails_at(&[], 0, Truncated);
    fails_at(&[0x03, 0x01, 0x6A], 3, Truncated);
    fails_at(&doc(&[0x00, 0x0D, 0x45, 0x48]), 8, Truncated);
    fails_at(&[0x07, 0x01, 0x6A, 0x00], 0, UnsupportedVersion(7));
    fails_at(&[0x03, 0x02, 0x6A, 0x00], 1, UnsupportedPublicId(2));
    fails_at(&[0x03, 0x01, 0x04, 0x00], 2, UnsupportedCharset(4));
    fails_at(&[0x03, 0x01, 0x6A, 0x02, b'a', 0], 3, StringTable(2));
    fails_at(
        &[0x03, 0x81, 0x81, 0x81, 0x81, 0x81, 0x01],
        1,
        BadMultiByteInt,
    );
    fails_at(&[0x03, 0x90, 0x80, 0x80, 0x80, 0x00], 1, BadMultiByteInt);
    fails_at(&doc(&[0x00, 0x63, 0x45]), 5, UnknownCodePage(0x63));
    fails_at(
        &doc(&[0x00, 0x0D, 0x7F]),
        6,
        UnknownTag {
            page: 13,
            token: 0x3F,
        },
    );
    fails_at(
        &doc(&[0x00, 0x0D, 0x45, 0x48, 0x03, 0xFF, 0xFE, 0x00, 0x01, 0x01]),
        9,
        InvalidUtf8,
    );
    fails_at(
        &doc(&[0x00, 0x0D, 0x45, 0x48, 0x03, b'8', b'0']),
        11,
        Truncated,
    );
    fails_at(&doc(&[0x00, 0x0D, 0x45, 0xC3, 0x05, 0x01]), 10, Truncated);
    fails_at(&doc(&[0x00, 0x0D, 0xC5]), 6, UnsupportedToken(0xC5));
    fails_at(&doc(&[0x00, 0x0D, 0x45, 0x02]), 7, UnsupportedToken(0x02));
    fails_at(&doc(&[0x01]), 4, UnexpectedEnd);
    fails_at(&doc(&[0x03, b'x', 0x00]), 4, ContentOutsideRoot);
    fails_at(&doc(&[0x00, 0x0D, 0x05, 0x05]), 7, TrailingData(1));
}

#[test]
fn depth_and_size_are_bounded() {
    let limits = Limits {
        max_len: 64,
        max_depth: 3,
    };
    // Folders > Folder > Folder ... on page 13, content bit set, never closed.
    let deep = doc(&[0x00, 0x0D, 0x45, 0x49, 0x4A, 0x4A, 0x4A]);
    let err = decode_with(&deep, limits).expect_err("too deep");
    assert_eq!((err.offset, err.kind), (9, DecodeErrorKind::TooDeep(3)));

    let big = doc(&[0x00; 100]);
    let err = decode_with(&big, limits).expect_err("too large");
    assert_eq!(
        err.kind,
        DecodeErrorKind::TooLarge {
            len: 104,
            limit: 64
        }
    );

    // A million nested elements is refused at the default limit, not a stack overflow.
    let mut bomb = doc(&[0x00, 0x0D]);
    bomb.extend(std::iter::repeat_n(0x49, 1_000_000));
    assert!(decode(&bomb).is_err());
}

/// Any element of any page, with text, opaque data and children mixed.
fn tree() -> impl Strategy<Value = Element> {
    let tag = (0..CODE_PAGES.len()).prop_flat_map(|p| {
        let tags = CODE_PAGES[p].tags;
        (Just(p as u8), 0..tags.len()).prop_map(move |(page, i)| (page, tags[i].0))
    });
    let leaf = (
        tag.clone(),
        prop::option::of(prop_oneof![
            "[^\u{0}]{0,12}".prop_map(Node::Text),
            prop::collection::vec(any::<u8>(), 0..200).prop_map(Node::Opaque),
        ]),
    )
        .prop_map(|((page, token), content)| Element {
            page,
            token,
            children: content.into_iter().collect(),
        });
    leaf.prop_recursive(6, 64, 6, move |inner| {
        (tag.clone(), prop::collection::vec(inner, 1..6)).prop_map(|((page, token), kids)| {
            Element {
                page,
                token,
                children: kids.into_iter().map(Node::Element).collect(),
            }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = decode(&bytes) {
            prop_assert!(err.offset <= bytes.len());
        }
    }

    #[test]
    fn arbitrary_bodies_after_a_valid_header_never_panic(
        body in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        if let Err(err) = decode(&doc(&body)) {
            prop_assert!(err.offset <= body.len() + 4);
        }
    }

    #[test]
    fn trees_round_trip_byte_exact(root in tree()) {
        let bytes = encode(&root).expect("encodes");
        let back = decode(&bytes).expect("decodes");
        prop_assert_eq!(&back, &root);
        prop_assert_eq!(encode(&back).expect("encodes"), bytes);
    }

    #[test]
    fn truncating_a_valid_document_is_an_error(root in tree(), cut in any::<prop::sample::Index>()) {
        let bytes = encode(&root).expect("encodes");
        let at = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..at]).is_err());
    }
}
