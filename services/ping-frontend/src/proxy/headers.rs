//! Which headers cross the proxy. Everything end-to-end does, byte for byte (`Authorization`,
//! `MS-ASProtocolVersion`, `X-MS-PolicyKey`, `Content-Encoding`, every `MS-AS*`/`X-MS-*`);
//! hop-by-hop headers (RFC 9110 7.6.1) and framing stay on their own hop.

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers each hop sets for itself.
const OWN: [&str; 3] = ["host", "content-length", "expect"];

/// Whether a header is end-to-end. `connection` is the value of the message's own
/// `Connection` header, whose tokens name more hop-by-hop headers.
pub fn crosses(name: &str, connection: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    if HOP_BY_HOP.contains(&lower.as_str()) || OWN.contains(&lower.as_str()) {
        return false;
    }
    !connection
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(lower.as_bytes()))
}

/// The values of the header `wanted` among `headers`, joined by commas.
pub fn joined<'a>(wanted: &str, headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut value = Vec::new();
    for (name, v) in headers {
        if name.eq_ignore_ascii_case(wanted) {
            if !value.is_empty() {
                value.push(b',');
            }
            value.extend_from_slice(v);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_to_end_headers_cross_and_hop_headers_stay() {
        for name in [
            "Authorization",
            "MS-ASProtocolVersion",
            "X-MS-PolicyKey",
            "Content-Encoding",
            "MS-ASAcceptMultiPart",
            "User-Agent",
        ] {
            assert!(crosses(name, b""), "{name}");
        }
        for name in [
            "Connection",
            "Keep-Alive",
            "Transfer-Encoding",
            "Host",
            "TE",
        ] {
            assert!(!crosses(name, b""), "{name}");
        }
        assert!(!crosses("X-Secret-Hop", b"keep-alive, x-secret-hop"));
    }
}
