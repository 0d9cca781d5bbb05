//! The tree as XML, in the dialect libwbxml's `wbxml2xml -l ACTIVESYNC` prints and
//! `xml2wbxml` reads: the root and every element whose code page differs from its parent's carry
//! `xmlns="Page:"`. The parser also takes the prefixed form of the MS-ASCMD examples
//! (`xmlns:email="Email"`, `<email:Subject>`).
//!
//! Opaque data, which XML cannot hold, is written as base64 in an element marked
//! `opaque="base64"`, or as `<?opaque BASE64?>` when mixed with other content.

use base64::Engine as _;
use quick_xml::events::{BytesStart, Event};

use super::{code_page, code_page_named, tag_name, tag_token, Element, Node};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Renders a tree as indented XML. Unknown tokens render as `unknown-0xNN` (the decoder never
/// produces them; a hand-built tree might).
pub fn to_xml(root: &Element) -> String {
    let mut out = String::from(concat!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n",
        // libwbxml's xml2wbxml picks its tables by this DOCTYPE.
        "<!DOCTYPE ActiveSync PUBLIC \"-//MICROSOFT//DTD ActiveSync//EN\" \"http://www.microsoft.com/\">\n"
    ));
    write_element(&mut out, root, None, 0);
    out
}

fn write_element(out: &mut String, element: &Element, parent_page: Option<u8>, depth: usize) {
    let name = tag_name(element.page, element.token)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("unknown-{:#04x}", element.token));
    indent(out, depth);
    out.push('<');
    out.push_str(&name);
    if parent_page != Some(element.page) {
        let page = code_page(element.page).map_or("Unknown", |p| p.name);
        out.push_str(&format!(" xmlns=\"{page}:\""));
    }
    match element.children.as_slice() {
        [] => out.push_str("/>\n"),
        [Node::Opaque(bytes)] => {
            out.push_str(" opaque=\"base64\">");
            out.push_str(&B64.encode(bytes));
            out.push_str(&format!("</{name}>\n"));
        }
        children if children.iter().all(|c| matches!(c, Node::Text(_))) => {
            out.push('>');
            for child in children {
                if let Node::Text(text) = child {
                    out.push_str(&quick_xml::escape::escape(text.as_str()));
                }
            }
            out.push_str(&format!("</{name}>\n"));
        }
        children => {
            out.push_str(">\n");
            for child in children {
                match child {
                    Node::Element(e) => write_element(out, e, Some(element.page), depth + 1),
                    Node::Text(text) => {
                        indent(out, depth + 1);
                        out.push_str(&quick_xml::escape::escape(text.as_str()));
                        out.push('\n');
                    }
                    Node::Opaque(bytes) => {
                        indent(out, depth + 1);
                        out.push_str(&format!("<?opaque {}?>\n", B64.encode(bytes)));
                    }
                }
            }
            indent(out, depth);
            out.push_str(&format!("</{name}>\n"));
        }
    }
}

fn indent(out: &mut String, depth: usize) {
    for _ in 0..depth {
        out.push_str("  ");
    }
}

/// Why an XML document could not become a tree.
#[derive(Debug, thiserror::Error)]
#[error("invalid EAS XML at byte {offset}: {reason}")]
pub struct XmlError {
    pub offset: u64,
    pub reason: String,
}

/// Deepest nesting [`from_xml`] accepts, as the WBXML decoder's default.
const MAX_DEPTH: usize = 32;

/// One open element and the namespace scope it set up.
struct Open {
    element: Element,
    opaque: bool,
    prefixes: Vec<(String, u8)>,
}

/// Parses XML into a tree. Whitespace-only text between elements is ignored, as `xml2wbxml`
/// ignores it by default.
pub fn from_xml(xml: &str) -> Result<Element, XmlError> {
    let mut reader = quick_xml::Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut open: Vec<Open> = Vec::new();
    loop {
        let offset = reader.buffer_position();
        let fail = |reason: String| XmlError { offset, reason };
        let event = reader.read_event().map_err(|e| fail(e.to_string()))?;
        let finished = match event {
            Event::Start(_) | Event::Empty(_) if open.len() >= MAX_DEPTH => {
                return Err(fail(format!("elements nested deeper than {MAX_DEPTH}")));
            }
            Event::Start(start) => {
                open.push(open_element(&start, &open).map_err(fail)?);
                None
            }
            Event::Empty(start) => Some(open_element(&start, &open).map_err(fail)?.element),
            Event::End(_) => match open.pop() {
                Some(done) => Some(done.element),
                None => return Err(fail("closing tag with no open element".into())),
            },
            Event::Text(text) => {
                let text = text.unescape().map_err(|e| fail(e.to_string()))?;
                add_text(&mut open, &text).map_err(fail)?;
                None
            }
            Event::CData(data) => {
                let text = std::str::from_utf8(&data).map_err(|e| fail(e.to_string()))?;
                add_text(&mut open, text).map_err(fail)?;
                None
            }
            Event::PI(pi) => {
                let content = std::str::from_utf8(&pi).map_err(|e| fail(e.to_string()))?;
                if let Some(data) = content.strip_prefix("opaque") {
                    let bytes = B64
                        .decode(data.trim())
                        .map_err(|e| fail(format!("opaque data: {e}")))?;
                    match open.last_mut() {
                        Some(parent) => parent.element.children.push(Node::Opaque(bytes)),
                        None => return Err(fail("opaque data outside any element".into())),
                    }
                }
                None
            }
            Event::Eof => return Err(fail("document ends before its root element closes".into())),
            Event::Decl(_) | Event::DocType(_) | Event::Comment(_) => None,
        };
        if let Some(element) = finished {
            match open.last_mut() {
                Some(parent) => parent.element.children.push(Node::Element(element)),
                None => return finish(&mut reader, element),
            }
        }
    }
}

fn finish(reader: &mut quick_xml::Reader<&[u8]>, root: Element) -> Result<Element, XmlError> {
    loop {
        let offset = reader.buffer_position();
        match reader.read_event() {
            Ok(Event::Eof) => return Ok(root),
            Ok(Event::Text(t)) if t.iter().all(u8::is_ascii_whitespace) => {}
            Ok(Event::Comment(_)) => {}
            Ok(_) => {
                return Err(XmlError {
                    offset,
                    reason: "content after the root element".into(),
                })
            }
            Err(e) => {
                return Err(XmlError {
                    offset,
                    reason: e.to_string(),
                })
            }
        }
    }
}

fn add_text(open: &mut [Open], text: &str) -> Result<(), String> {
    if text.chars().all(char::is_whitespace) {
        return Ok(());
    }
    let Some(parent) = open.last_mut() else {
        return Err("text outside any element".into());
    };
    if parent.opaque {
        let bytes = B64
            .decode(text.trim())
            .map_err(|e| format!("opaque data: {e}"))?;
        parent.element.children.push(Node::Opaque(bytes));
    } else {
        parent.element.children.push(Node::Text(text.to_owned()));
    }
    Ok(())
}

/// A namespace value names a code page: libwbxml writes `Ping:`, MS-ASCMD writes `Ping`.
fn page_of_namespace(value: &str) -> Result<u8, String> {
    let name = value.strip_suffix(':').unwrap_or(value);
    code_page_named(name)
        .map(|page| page.number)
        .ok_or_else(|| format!("namespace {value:?} is not an EAS code page"))
}

fn open_element(start: &BytesStart<'_>, open: &[Open]) -> Result<Open, String> {
    let qname = std::str::from_utf8(start.name().as_ref())
        .map_err(|e| e.to_string())?
        .to_owned();
    let mut default_page = None;
    let mut prefixes = Vec::new();
    let mut opaque = false;
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let key = std::str::from_utf8(attribute.key.as_ref()).map_err(|e| e.to_string())?;
        let value = attribute.unescape_value().map_err(|e| e.to_string())?;
        if key == "xmlns" {
            default_page = Some(page_of_namespace(&value)?);
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            prefixes.push((prefix.to_owned(), page_of_namespace(&value)?));
        } else if key == "opaque" && value == "base64" {
            opaque = true;
        } else {
            return Err(format!("attribute {key:?}: EAS elements have none"));
        }
    }
    let (page, local) = match qname.split_once(':') {
        Some((prefix, local)) => {
            let page = prefixes
                .iter()
                .rev()
                .chain(open.iter().rev().flat_map(|o| o.prefixes.iter().rev()))
                .find(|(p, _)| p == prefix)
                .map(|&(_, page)| page)
                .ok_or_else(|| format!("prefix {prefix:?} is not declared"))?;
            (page, local)
        }
        None => {
            let inherited = open.last().map(|o| o.element.page);
            let page = default_page.or(inherited).ok_or_else(|| {
                format!("<{qname}> has no namespace: say its code page, as xmlns=\"Ping:\"")
            })?;
            (page, qname.as_str())
        }
    };
    let token = tag_token(page, local).ok_or_else(|| {
        let page_name = code_page(page).map_or("?", |p| p.name);
        format!("<{local}> is not a tag of code page {page} ({page_name})")
    })?;
    // A default namespace reaches unprefixed descendants through the element's own page, which
    // they inherit; only prefixes need a scope of their own.
    Ok(Open {
        element: Element::new(page, token),
        opaque,
        prefixes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_namespace_styles() {
        let libwbxml = r#"<?xml version="1.0"?>
<!DOCTYPE ActiveSync PUBLIC "-//MICROSOFT//DTD ActiveSync//EN" "http://www.microsoft.com/">
<Ping xmlns="Ping:"><HeartbeatInterval>80</HeartbeatInterval></Ping>"#;
        let ms =
            r#"<Sync xmlns="AirSync" xmlns:airsyncbase="AirSyncBase"><airsyncbase:Body/></Sync>"#;
        let ping = from_xml(libwbxml).expect("libwbxml style");
        assert_eq!(
            ping,
            Element::new(13, 5).child(Element::with_text(13, 8, "80"))
        );
        let sync = from_xml(ms).expect("MS-ASCMD style");
        assert_eq!(sync, Element::new(0, 5).child(Element::new(17, 0x0A)));
    }

    #[test]
    fn round_trips_mixed_pages_and_opaque() {
        let tree = Element::new(0, 5).child(Element {
            page: 17,
            token: 0x0A,
            children: vec![
                Node::Element(Element::with_text(17, 0x06, "2 < 3 & \"x\"")),
                Node::Element(Element {
                    page: 17,
                    token: 0x0B,
                    children: vec![Node::Opaque(vec![0, 1, 2, 255])],
                }),
            ],
        });
        assert_eq!(from_xml(&to_xml(&tree)).expect("parses"), tree);
    }

    #[test]
    fn names_what_is_wrong() {
        let err = from_xml("<Ping xmlns=\"Ping:\"><Nope/></Ping>").expect_err("unknown tag");
        assert!(err.reason.contains("<Nope>"), "{err}");
        let err = from_xml("<Ping/>").expect_err("no namespace");
        assert!(err.reason.contains("no namespace"), "{err}");
        let err = from_xml("<Ping xmlns=\"Bogus:\"/>").expect_err("bad page");
        assert!(err.reason.contains("Bogus"), "{err}");
        assert!(from_xml("<Ping xmlns=\"Ping:\">").is_err(), "unclosed");
    }
}
