//! Records a device seals itself, valid or not, opened by our record layer: the parsers behind
//! the AEAD see what random bytes never reach.

use super::*;
use crate::transport::records::{APPLICATION_DATA, MAX_PLAINTEXT};

/// A handshake, then the device's sending keys taken out of rustls: the test seals the
/// device's records itself, valid or not, and our server side opens them.
async fn pair_with_device_keys(
    version: &'static rustls::SupportedProtocolVersion,
) -> (TlsStream, Records) {
    let (server, client) = pair(version).await;
    let (_tcp, conn) = client.into_inner();
    let secrets = conn.dangerous_extract_secrets().expect("client secrets");
    let tls13 = version.version == rustls::ProtocolVersion::TLSv1_3;
    (
        server,
        Records::device(tls13, secrets).expect("device keys"),
    )
}

/// What a device's record should come to, by RFC 8446 / 5246 and our rules.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Data,
    Closed,
    Refused,
}

/// One record a device might send: authentic, but of any type and content.
fn random_record(rng: &mut impl rand::Rng, tls13: bool) -> (u8, Vec<u8>, usize) {
    let len = match rng.gen_range(0..20) {
        0 => 0,
        1 => MAX_PLAINTEXT,
        2 => MAX_PLAINTEXT + 1,
        3 => 2,
        _ => rng.gen_range(1..1500),
    };
    let padding = if tls13 && rng.gen_bool(0.3) {
        rng.gen_range(0..300)
    } else {
        0
    };
    let mut data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    let kind = match rng.gen_range(0..12) {
        0 => {
            data = vec![1, 0]; // close_notify
            ALERT
        }
        1 | 2 => ALERT,
        3 => {
            // Handshake messages other than a lone KeyUpdate (24), which a_key_update_is_
            // followed_both_ways covers: random bodies, so the parser behind the AEAD sees
            // anything; an empty record; a KeyUpdate with another message after it.
            match rng.gen_range(0..4) {
                0 => data.clear(),
                1 => data = [24, 0, 0, 1, 0].repeat(2),
                _ => {
                    if let Some(first) = data.first_mut() {
                        *first = (*first).max(25);
                    }
                }
            }
            HANDSHAKE
        }
        // No content type (TLS 1.3 then takes the last non-zero byte for it), or not TLS's.
        4 => 0,
        5 => rng.gen_range(25..=255),
        6 => CHANGE_CIPHER_SPEC,
        _ => APPLICATION_DATA,
    };
    (kind, data, padding)
}

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;

/// The model: what the record layer must make of a record, and the application data in it.
fn expect(tls13: bool, kind: u8, data: &[u8]) -> (Expect, &[u8]) {
    // TLS 1.3 hides the type inside: the last byte that is not padding.
    let (kind, content) = match (tls13, kind) {
        (true, 0) => match data.iter().rposition(|&b| b != 0) {
            Some(at) => (data[at], &data[..at]),
            None => return (Expect::Refused, &[]),
        },
        _ => (kind, data),
    };
    if content.len() > MAX_PLAINTEXT {
        return (Expect::Refused, &[]);
    }
    match (kind, content) {
        (APPLICATION_DATA, content) => (Expect::Data, content),
        (ALERT, [_, 0]) => (Expect::Closed, &[]),
        // Other alerts, TLS 1.2 renegotiation, TLS 1.3 handshake messages but a KeyUpdate
        // alone in its record (RFC 8446 section 5.1: an empty record, or a KeyUpdate with a
        // message after it, ends the connection), change_cipher_spec, unknown types.
        _ => (Expect::Refused, &[]),
    }
}

/// Authentic records of every type and size, with TLS 1.3 padding, cut into reads at random
/// points: the plaintext is exactly the application data before the first record that ends the
/// connection, that record's outcome is the one expected, and nothing panics. The parsers behind
/// the AEAD (content type, padding, alerts, post-handshake messages) see what random bytes
/// never reach: a randomised property test, not coverage-guided fuzzing.
#[tokio::test]
async fn authentic_records_of_any_kind_are_opened_or_refused_whatever_the_cuts() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1446);
    for case in 0..150 {
        let version = if case % 2 == 0 {
            &rustls::version::TLS13
        } else {
            &rustls::version::TLS12
        };
        let (mut server, mut device) = pair_with_device_keys(version).await;
        let tls13 = version.version == rustls::ProtocolVersion::TLSv1_3;
        let (mut wire, mut expected, mut end) = (Vec::new(), Vec::new(), None);
        let mut kinds = Vec::new();
        for _ in 0..rng.gen_range(1..8) {
            let (kind, data, padding) = random_record(&mut rng, tls13);
            device
                .seal_padded(kind, &data, padding, &mut wire)
                .expect("the device seals");
            let (expect, content) = expect(tls13, kind, &data);
            kinds.push((kind, data.len(), padding, expect));
            match (end, expect) {
                (None, Expect::Data) => expected.extend_from_slice(content),
                (None, other) => end = Some(other),
                (Some(_), _) => {}
            }
        }
        let (mut incoming, mut plaintext, mut outgoing) = (Vec::new(), Vec::new(), Vec::new());
        let mut outcome = None;
        let mut rest = &wire[..];
        while !rest.is_empty() && outcome.is_none() {
            let cut = rng.gen_range(1..=rest.len().min(4000));
            incoming.extend_from_slice(&rest[..cut]);
            rest = &rest[cut..];
            match server
                .records
                .open(&mut incoming, &mut plaintext, &mut outgoing)
            {
                Ok(Opened::More) => {}
                Ok(Opened::Closed) => outcome = Some(Expect::Closed),
                Err(err) => {
                    assert_eq!(err.kind(), ErrorKind::InvalidData, "case {case}: {err}");
                    outcome = Some(Expect::Refused);
                }
            }
        }
        assert_eq!(outcome, end, "case {case} ({version:?}): records {kinds:?}");
        assert!(
            plaintext == expected,
            "case {case}: the plaintext before the end"
        );
        assert!(outgoing.is_empty(), "case {case}: nothing to answer");
        if end.is_none() {
            assert!(incoming.is_empty(), "case {case}: every record was opened");
        }
    }
}
