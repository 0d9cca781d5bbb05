//! The names the cluster derives from a mailbox and a device: one function each, so every part
//! (Redis keys, NATS subjects, history rows) agrees on them.

/// The canonical form of a mailbox name: trimmed and lower-cased, since users type
/// `Alice@Example.com` and `alice@example.com` for the same mailbox.
pub fn canonical_mailbox(name: &str) -> String {
    // ASCII only: Unicode case folding maps distinct names to one (U+212A KELVIN SIGN + "ate@"
    // would become "kate@"), and a mailbox is an identity.
    name.trim().to_ascii_lowercase()
}

/// Encodes any string as one NATS subject token and Redis key part: ASCII letters, digits and
/// `-` stand for themselves; every other byte of the UTF-8 form becomes `_XX` (upper-case hex).
/// Because `_` itself is escaped, the encoding is injective: distinct names give distinct tokens.
/// The empty string becomes `_`, which no other input produces.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(name.len() + 8);
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The token of a mailbox: the subject token of `<ns>.changes.<token>` and the hash tag of the
/// mailbox's Redis keys. Takes the name as given; callers pass [`canonical_mailbox`] forms.
pub fn mailbox_token(mailbox: &str) -> String {
    token(mailbox)
}

/// The one key of a device, whichever query form it used: its mailbox and its DeviceId (kept in
/// its case, as devices resend it byte for byte).
pub fn device_key(mailbox: &str, device_id: &str) -> String {
    format!("{}:{}", token(mailbox), token(device_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailboxes_fold_ascii_case_only() {
        assert_eq!(
            canonical_mailbox(" Alice@Example.COM "),
            "alice@example.com"
        );
        assert_ne!(
            canonical_mailbox("\u{212A}ate@example.com"),
            "kate@example.com"
        );
        assert_eq!(canonical_mailbox("Ünïcode@x"), "Ünïcode@x");
    }
    use proptest::prelude::*;

    fn valid_subject_token(t: &str) -> bool {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    #[test]
    fn awkward_names_give_valid_tokens() {
        for name in [
            "alice@example.com",
            "a.b",
            "a b",
            "*",
            ">",
            "Zoë",
            "{x}",
            "",
            "_",
            "a_2E",
        ] {
            let t = mailbox_token(name);
            assert!(valid_subject_token(&t), "{name:?} gave {t:?}");
        }
        assert_eq!(mailbox_token("alice@example.com"), "alice_40example_2Ecom");
        assert_ne!(mailbox_token("a.b"), mailbox_token("a_2Eb"));
        assert_eq!(
            canonical_mailbox(" Alice@Example.COM "),
            "alice@example.com"
        );
    }

    proptest! {
        #[test]
        fn tokens_are_valid_and_injective(a in ".*", b in ".*") {
            let (ta, tb) = (token(&a), token(&b));
            prop_assert!(valid_subject_token(&ta));
            prop_assert_eq!(a == b, ta == tb);
        }
    }
}
