//! IMAP responses as the watcher needs them (RFC 3501, 5465, 7162): a response is tokenised
//! with its literals inline, then read as STATUS, LIST, EXISTS, CAPABILITY or a tagged result.

use base64::Engine as _;

/// One token of a response line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    Atom(String),
    /// A quoted string or a literal.
    Str(Vec<u8>),
    Open,
    Close,
}

impl Token {
    pub fn text(&self) -> Option<String> {
        match self {
            Token::Atom(a) => Some(a.clone()),
            Token::Str(s) => Some(String::from_utf8_lossy(s).into_owned()),
            _ => None,
        }
    }

    fn is(&self, word: &str) -> bool {
        matches!(self, Token::Atom(a) if a.eq_ignore_ascii_case(word))
    }
}

/// Tokenises one piece of a response (a line without its CRLF, and without the `{n}` that
/// announces a literal, which the caller appends as [`Token::Str`]).
pub fn tokenise(line: &[u8], out: &mut Vec<Token>) {
    let mut i = 0;
    while i < line.len() {
        match line[i] {
            b' ' => i += 1,
            b'(' => {
                out.push(Token::Open);
                i += 1;
            }
            b')' => {
                out.push(Token::Close);
                i += 1;
            }
            b'"' => {
                let mut s = Vec::new();
                i += 1;
                while i < line.len() && line[i] != b'"' {
                    if line[i] == b'\\' && i + 1 < line.len() {
                        i += 1;
                    }
                    s.push(line[i]);
                    i += 1;
                }
                out.push(Token::Str(s));
                i += 1;
            }
            _ => {
                let start = i;
                while i < line.len() && !matches!(line[i], b' ' | b'(' | b')' | b'"') {
                    i += 1;
                }
                out.push(Token::Atom(
                    String::from_utf8_lossy(&line[start..i]).into_owned(),
                ));
            }
        }
    }
}

/// The size of the literal a line announces at its end (`{12}` or `{12+}`), if any.
pub fn literal_size(line: &[u8]) -> Option<usize> {
    let body = line.strip_suffix(b"}")?;
    let open = body.iter().rposition(|&b| b == b'{')?;
    let digits = &body[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 9 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A folder's counters, as STATUS reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub uidvalidity: u64,
    pub uidnext: u64,
    pub messages: u64,
    pub highestmodseq: u64,
}

impl Counters {
    pub fn encode(&self) -> String {
        format!(
            "{} {} {} {}",
            self.uidvalidity, self.uidnext, self.messages, self.highestmodseq
        )
    }

    pub fn decode(raw: &str) -> Option<Counters> {
        let mut n = raw.split(' ').map(|p| p.parse::<u64>().ok());
        Some(Counters {
            uidvalidity: n.next()??,
            uidnext: n.next()??,
            messages: n.next()??,
            highestmodseq: n.next()??,
        })
    }

    /// Applies a STATUS's items; a NOTIFY STATUS may carry only some of them.
    fn apply(&mut self, items: &[Token]) {
        for pair in items.chunks_exact(2) {
            let (Some(name), Some(value)) = (pair[0].text(), pair[1].text()) else {
                continue;
            };
            let Ok(value) = value.parse() else { continue };
            match name.to_ascii_uppercase().as_str() {
                "UIDVALIDITY" => self.uidvalidity = value,
                "UIDNEXT" => self.uidnext = value,
                "MESSAGES" => self.messages = value,
                "HIGHESTMODSEQ" => self.highestmodseq = value,
                _ => {}
            }
        }
    }
}

/// What an untagged response says, as far as the watcher cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untagged {
    /// `* STATUS name (items)`: the raw (modified UTF-7) name and the items, applied to a base.
    Status {
        name: String,
        items: Vec<Token>,
    },
    /// `* LIST (flags) delimiter name`: `gone` when flagged `\NonExistent` (deleted, or the
    /// old name of a rename).
    List {
        name: String,
        delimiter: Option<String>,
        gone: bool,
        /// `\Noselect` (or gone): a name in the hierarchy that holds no messages.
        noselect: bool,
    },
    Exists(u64),
    Capability(Vec<String>),
    /// `* BYE`: the server is closing.
    Bye,
    Other,
}

pub fn untagged(tokens: &[Token]) -> Untagged {
    if !tokens.first().is_some_and(|t| t.is("*")) {
        return Untagged::Other;
    }
    let rest = &tokens[1..];
    match rest.first() {
        Some(t) if t.is("STATUS") => status(&rest[1..]).unwrap_or(Untagged::Other),
        Some(t) if t.is("LIST") => list(&rest[1..]).unwrap_or(Untagged::Other),
        Some(t) if t.is("CAPABILITY") => {
            Untagged::Capability(rest[1..].iter().filter_map(Token::text).collect())
        }
        Some(t) if t.is("BYE") => Untagged::Bye,
        Some(Token::Atom(n)) if rest.get(1).is_some_and(|t| t.is("EXISTS")) => {
            n.parse().map(Untagged::Exists).unwrap_or(Untagged::Other)
        }
        Some(t) if t.is("OK") => match rest.get(1).and_then(Token::text) {
            // A greeting or an OK carrying `[CAPABILITY ...]`.
            Some(code) if code.eq_ignore_ascii_case("[CAPABILITY") => Untagged::Capability(
                rest[2..]
                    .iter()
                    .filter_map(Token::text)
                    .take_while(|a| !a.ends_with(']'))
                    .chain(
                        rest[2..]
                            .iter()
                            .filter_map(Token::text)
                            .find(|a| a.ends_with(']'))
                            .map(|a| a.trim_end_matches(']').to_owned()),
                    )
                    .collect(),
            ),
            _ => Untagged::Other,
        },
        _ => Untagged::Other,
    }
}

fn status(tokens: &[Token]) -> Option<Untagged> {
    let name = tokens.first()?.text()?;
    let open = tokens.iter().position(|t| *t == Token::Open)?;
    let close = tokens.iter().rposition(|t| *t == Token::Close)?;
    let items = tokens.get(open + 1..close)?.to_vec();
    Some(Untagged::Status { name, items })
}

fn list(tokens: &[Token]) -> Option<Untagged> {
    if tokens.first() != Some(&Token::Open) {
        return None;
    }
    let close = tokens.iter().position(|t| *t == Token::Close)?;
    let gone = tokens[1..close].iter().any(|t| t.is("\\NonExistent"));
    let noselect = gone || tokens[1..close].iter().any(|t| t.is("\\Noselect"));
    let delimiter = match tokens.get(close + 1)? {
        Token::Atom(a) if a.eq_ignore_ascii_case("NIL") => None,
        other => other.text(),
    };
    let name = tokens.get(close + 2)?.text()?;
    Some(Untagged::List {
        name,
        delimiter,
        gone,
        noselect,
    })
}

impl Untagged {
    /// The counters a STATUS leaves, starting from `base`.
    pub fn counters(items: &[Token], base: Counters) -> Counters {
        let mut counters = base;
        counters.apply(items);
        counters
    }
}

/// A tagged result: `Some(Ok(()))` for `tag OK`, `Some(Err(text))` for NO or BAD.
pub fn tagged(tokens: &[Token], tag: &str) -> Option<Result<(), String>> {
    match tokens.first() {
        Some(Token::Atom(t)) if t == tag => {}
        _ => return None,
    }
    if tokens.get(1).is_some_and(|t| t.is("OK")) {
        Some(Ok(()))
    } else {
        let text: Vec<String> = tokens[1..].iter().filter_map(Token::text).collect();
        Some(Err(text.join(" ")))
    }
}

/// Decodes a mailbox name from IMAP's modified UTF-7 (RFC 3501 5.1.3) to UTF-8; a name that is
/// not valid modified UTF-7 is kept as it is.
pub fn decode_mailbox(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let Some(dash) = after.find('-') else {
            return name.to_owned();
        };
        let encoded = &after[..dash];
        if encoded.is_empty() {
            out.push('&');
        } else {
            let b64 = encoded.replace(',', "/");
            let Ok(bytes) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(b64) else {
                return name.to_owned();
            };
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|p| u16::from_be_bytes([p[0], p[1]]))
                .collect();
            match String::from_utf16(&units) {
                Ok(text) => out.push_str(&text),
                Err(_) => return name.to_owned(),
            }
        }
        rest = &after[dash + 1..];
    }
    out.push_str(rest);
    out
}

/// Quotes a mailbox name for a command.
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(line: &str) -> Vec<Token> {
        let mut out = Vec::new();
        tokenise(line.as_bytes(), &mut out);
        out
    }

    #[test]
    fn status_list_exists_capability_and_results() {
        let Untagged::Status { name, items } = untagged(&tokens(
            r#"* STATUS "Archive/2024" (UIDNEXT 12 MESSAGES 3 HIGHESTMODSEQ 40)"#,
        )) else {
            panic!("a STATUS");
        };
        assert_eq!(name, "Archive/2024");
        let c = Untagged::counters(
            &items,
            Counters {
                uidvalidity: 7,
                ..Counters::default()
            },
        );
        assert_eq!(
            c,
            Counters {
                uidvalidity: 7,
                uidnext: 12,
                messages: 3,
                highestmodseq: 40
            }
        );
        assert_eq!(Counters::decode(&c.encode()), Some(c));
        assert_eq!(
            untagged(&tokens(r#"* LIST (\HasNoChildren) "/" INBOX"#)),
            Untagged::List {
                name: "INBOX".into(),
                delimiter: Some("/".into()),
                gone: false,
                noselect: false
            }
        );
        assert_eq!(
            untagged(&tokens(
                r#"* LIST (\NonExistent) "." "Old" ("OLDNAME" ("x"))"#
            )),
            Untagged::List {
                name: "Old".into(),
                delimiter: Some(".".into()),
                gone: true,
                noselect: true
            }
        );
        assert_eq!(untagged(&tokens("* 5 EXISTS")), Untagged::Exists(5));
        assert_eq!(
            untagged(&tokens("* OK [CAPABILITY IMAP4rev1 NOTIFY IDLE] ready")),
            Untagged::Capability(vec!["IMAP4rev1".into(), "NOTIFY".into(), "IDLE".into()])
        );
        assert_eq!(tagged(&tokens("a1 OK done"), "a1"), Some(Ok(())));
        assert_eq!(
            tagged(&tokens("a1 NO [AUTH] nope"), "a1"),
            Some(Err("NO [AUTH] nope".into()))
        );
        assert_eq!(tagged(&tokens("a2 OK done"), "a1"), None);
        assert_eq!(literal_size(b"* STATUS {12}"), Some(12));
        assert_eq!(literal_size(b"* STATUS {12+}"), Some(12));
        assert_eq!(literal_size(b"* OK {x}"), None);
    }

    #[test]
    fn modified_utf7_names() {
        assert_eq!(decode_mailbox("Entw&APw-rfe"), "Entwürfe");
        assert_eq!(decode_mailbox("&ZeVnLIqe-"), "日本語");
        assert_eq!(decode_mailbox("Tom &- Jerry"), "Tom & Jerry");
        assert_eq!(decode_mailbox("broken&"), "broken&");
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
