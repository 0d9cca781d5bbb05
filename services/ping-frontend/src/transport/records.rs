//! The TLS record layer after the handshake, run here instead of by rustls: rustls does the
//! handshake, then hands over the traffic keys (its kTLS interface, `KernelConnection`), and
//! this module seals and opens the records itself. What a parked TLS Ping holds is then two
//! keys, two IVs and two sequence numbers, not rustls's 3.2 KB of connection state (issue 14).
//! The keys are expanded for each record: a record costs an AES key schedule more, a parked
//! connection nothing.
//!
//! RFC 8446 section 5 (TLS 1.3) and RFC 5246 section 6.2.3.3 with RFC 5288 and RFC 7905 (TLS 1.2
//! AES-GCM and ChaCha20-Poly1305) are what this follows; it supports exactly the AEAD suites
//! the frontend's provider offers. After the handshake a device may send application data,
//! alerts and, in TLS 1.3, KeyUpdate; anything else ends the connection.

use std::io::{Error, ErrorKind};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion};

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
const CLOSE_NOTIFY: u8 = 0;

const HEADER: usize = 5;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM records carry the nonce's last 8 bytes.
const EXPLICIT_NONCE: usize = 8;
/// Most plaintext in one record.
pub const MAX_PLAINTEXT: usize = 1 << 14;
/// Most ciphertext in one record: TLS 1.3 allows 256 bytes of expansion, TLS 1.2 2,048.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
/// Records under one AES-GCM key before we stop (RFC 8446 section 5.5 allows 2^24.5): the
/// connection ends and the device reconnects. A Direct Push connection sends a few records an
/// hour.
const AES_GCM_RECORDS: u64 = 1 << 24;

fn invalid(reason: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidData, reason.into())
}

/// One direction's traffic key, IV and next sequence number.
struct Secret {
    alg: &'static aead::Algorithm,
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
    seq: u64,
    limit: u64,
}

impl Secret {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> std::io::Result<Secret> {
        let (alg, key, iv, limit) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
                (&aead::AES_128_GCM, key, iv, AES_GCM_RECORDS)
            }
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
                (&aead::AES_256_GCM, key, iv, AES_GCM_RECORDS)
            }
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, u64::MAX)
            }
            _ => return Err(invalid("a cipher suite this record layer does not know")),
        };
        let (key, iv) = (key.as_ref(), iv.as_ref());
        if key.len() != alg.key_len() || key.len() > 32 || iv.len() != NONCE_LEN {
            return Err(invalid("traffic secrets of unexpected sizes"));
        }
        let mut secret = Secret {
            alg,
            key: [0; 32],
            iv: [0; NONCE_LEN],
            seq,
            limit,
        };
        secret.key[..key.len()].copy_from_slice(key);
        secret.iv.copy_from_slice(iv);
        Ok(secret)
    }

    /// TLS 1.2: nonce bytes each record carries (RFC 5288's AES-GCM: 8; RFC 7905's ChaCha20: 0).
    fn tls12_explicit_nonce(&self) -> usize {
        if self.alg == &aead::CHACHA20_POLY1305 {
            0
        } else {
            EXPLICIT_NONCE
        }
    }

    /// The key for this record and its nonce (the IV XOR the sequence number); counts the record.
    fn next(&mut self) -> std::io::Result<(LessSafeKey, [u8; NONCE_LEN], u64)> {
        if self.seq >= self.limit {
            return Err(invalid("TLS key usage limit reached"));
        }
        let key = UnboundKey::new(self.alg, &self.key[..self.alg.key_len()])
            .map_err(|_| invalid("unusable traffic key"))?;
        let mut nonce = self.iv;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip(self.seq.to_be_bytes())
        {
            *n ^= s;
        }
        let seq = self.seq;
        self.seq += 1;
        Ok((LessSafeKey::new(key), nonce, seq))
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        // Best effort: the key does not outlive the connection in freed memory.
        self.key = [0; 32];
        self.iv = [0; NONCE_LEN];
    }
}

/// What opening the received records came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// More bytes are needed for the next record.
    More,
    /// The device sent close_notify: nothing more will come.
    Closed,
}

pub struct Records {
    tls13: bool,
    tx: Secret,
    rx: Secret,
    /// TLS 1.3: what computes the next keys when the device sends KeyUpdate.
    keys: Option<Box<KernelConnection<ServerConnectionData>>>,
}

impl Records {
    pub fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<ServerConnectionData>,
    ) -> std::io::Result<Records> {
        let tls13 = match kernel.protocol_version() {
            ProtocolVersion::TLSv1_3 => true,
            ProtocolVersion::TLSv1_2 => false,
            _ => return Err(invalid("a TLS version this record layer does not know")),
        };
        Ok(Records {
            tls13,
            tx: Secret::new(secrets.tx)?,
            rx: Secret::new(secrets.rx)?,
            keys: tls13.then(|| Box::new(kernel)),
        })
    }

    /// Records sealed under the current sending key.
    #[cfg(test)]
    pub fn sealed_under_this_key(&self) -> u64 {
        self.tx.seq
    }

    /// Appends `data` to `out` as application data records.
    pub fn seal_data(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        for chunk in data.chunks(MAX_PLAINTEXT) {
            self.seal(APPLICATION_DATA, chunk, out)?;
        }
        Ok(())
    }

    pub fn seal_close_notify(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        self.seal(ALERT, &[1, CLOSE_NOTIFY], out)
    }

    fn seal(&mut self, kind: u8, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        self.seal_padded(kind, data, 0, out)
    }

    /// Seals one record of any type; TLS 1.3 adds `padding` zeros after the type (we send none;
    /// the tests' devices do, as RFC 8446 section 5.4 allows).
    pub(super) fn seal_padded(
        &mut self,
        kind: u8,
        data: &[u8],
        padding: usize,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let (key, nonce, seq) = self.tx.next()?;
        let start = out.len();
        let sealing = |out: &mut Vec<u8>, body: usize, aad: &[u8]| {
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    &mut out[body..],
                )
                .map_err(|_| invalid("TLS record could not be sealed"))?;
            out.extend_from_slice(tag.as_ref());
            Ok::<_, Error>(())
        };
        if self.tls13 {
            // The real type goes inside; outside every record is application data.
            let len = record_len(data.len() + 1 + padding + TAG)?;
            let header = [APPLICATION_DATA, 3, 3, len[0], len[1]];
            out.extend_from_slice(&header);
            out.extend_from_slice(data);
            out.push(kind);
            out.resize(out.len() + padding, 0);
            sealing(out, start + HEADER, &header)
        } else {
            let explicit = self.tx.tls12_explicit_nonce();
            let len = record_len(explicit + data.len() + TAG)?;
            out.extend_from_slice(&[kind, 3, 3, len[0], len[1]]);
            out.extend_from_slice(&nonce[NONCE_LEN - explicit..]);
            out.extend_from_slice(data);
            sealing(
                out,
                start + HEADER + explicit,
                &tls12_aad(seq, kind, data.len()),
            )
        }
    }

    /// Opens every complete record at the front of `incoming`, appending application data to
    /// `plaintext` and whatever must be answered (a KeyUpdate) to `outgoing`; leaves a partial
    /// record in `incoming`. `incoming` comes from the network: any bytes at all.
    pub fn open(
        &mut self,
        incoming: &mut Vec<u8>,
        plaintext: &mut Vec<u8>,
        outgoing: &mut Vec<u8>,
    ) -> std::io::Result<Opened> {
        let mut used = 0;
        let opened = loop {
            let rest = &mut incoming[used..];
            if rest.len() < HEADER {
                break Opened::More;
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_CIPHERTEXT {
                return Err(invalid("TLS record overflow"));
            }
            if rest.len() < HEADER + len {
                break Opened::More;
            }
            let (kind, body) = self.open_one(&mut rest[..HEADER + len])?;
            let body = used + body.start..used + body.end;
            used += HEADER + len;
            match kind {
                APPLICATION_DATA => plaintext.extend_from_slice(&incoming[body]),
                ALERT => match incoming[body] {
                    [_, CLOSE_NOTIFY] => break Opened::Closed,
                    [_, alert] => return Err(invalid(format!("TLS alert {alert} received"))),
                    _ => return Err(invalid("malformed TLS alert")),
                },
                HANDSHAKE if self.tls13 => self.post_handshake(&incoming[body], outgoing)?,
                HANDSHAKE => return Err(invalid("TLS 1.2 renegotiation is not supported")),
                other => return Err(invalid(format!("unexpected TLS record type {other}"))),
            }
        };
        incoming.drain(..used);
        Ok(opened)
    }

    /// Opens one whole record in place; returns its type and where its plaintext is in it.
    fn open_one(&mut self, record: &mut [u8]) -> std::io::Result<(u8, std::ops::Range<usize>)> {
        let kind = record[0];
        if self.tls13 {
            if kind != APPLICATION_DATA {
                return Err(invalid(format!("unprotected TLS record of type {kind}")));
            }
            let (key, nonce, _) = self.rx.next()?;
            let (header, body) = record.split_at_mut(HEADER);
            let inner = key
                .open_in_place(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&*header),
                    body,
                )
                .map_err(|_| invalid("TLS record failed authentication"))?;
            // The type is the last byte that is not padding.
            let end = inner
                .iter()
                .rposition(|&b| b != 0)
                .ok_or_else(|| invalid("TLS record without a content type"))?;
            if end > MAX_PLAINTEXT {
                return Err(invalid("TLS record overflow"));
            }
            Ok((inner[end], HEADER..HEADER + end))
        } else {
            if kind == CHANGE_CIPHER_SPEC {
                return Err(invalid("unexpected change_cipher_spec"));
            }
            let (key, mut nonce, seq) = self.rx.next()?;
            let explicit = self.rx.tls12_explicit_nonce();
            let body = &mut record[HEADER..];
            let data_len = body
                .len()
                .checked_sub(explicit + TAG)
                .ok_or_else(|| invalid("TLS record too short"))?;
            if data_len > MAX_PLAINTEXT {
                return Err(invalid("TLS record overflow"));
            }
            nonce[NONCE_LEN - explicit..].copy_from_slice(&body[..explicit]);
            key.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(tls12_aad(seq, kind, data_len)),
                &mut body[explicit..],
            )
            .map_err(|_| invalid("TLS record failed authentication"))?;
            Ok((kind, HEADER + explicit..HEADER + explicit + data_len))
        }
    }

    /// TLS 1.3 handshake records after the handshake: a client may send only a KeyUpdate, and
    /// alone in its record, for what follows it is under the next key (RFC 8446 section 5.1,
    /// which also forbids empty handshake records).
    fn post_handshake(&mut self, record: &[u8], outgoing: &mut Vec<u8>) -> std::io::Result<()> {
        let requested = match record {
            [KEY_UPDATE, 0, 0, 1, update @ (0 | 1)] => *update == 1,
            [KEY_UPDATE, 0, 0, 1, 0 | 1, ..] => {
                return Err(invalid("TLS KeyUpdate not alone in its record"))
            }
            [] => return Err(invalid("empty TLS handshake record")),
            [kind, ..] => return Err(invalid(format!("unexpected TLS handshake message {kind}"))),
        };
        self.rx = self.next_secret(KernelConnection::update_rx_secret)?;
        if requested {
            // Ours, under the old key, announces the new one; update_not_requested.
            self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], outgoing)?;
            self.tx = self.next_secret(KernelConnection::update_tx_secret)?;
        }
        Ok(())
    }
}

/// The device's side, for the tests: a client's keys, sealing whatever a device might send.
#[cfg(test)]
impl Records {
    pub fn device(tls13: bool, secrets: ExtractedSecrets) -> std::io::Result<Records> {
        Ok(Records {
            tls13,
            tx: Secret::new(secrets.tx)?,
            rx: Secret::new(secrets.rx)?,
            keys: None,
        })
    }
}

type NextSecret = fn(
    &mut KernelConnection<ServerConnectionData>,
) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error>;

impl Records {
    /// One direction's next key after a KeyUpdate, from rustls's key schedule.
    fn next_secret(&mut self, update: NextSecret) -> std::io::Result<Secret> {
        let keys = self
            .keys
            .as_mut()
            .ok_or_else(|| invalid("KeyUpdate without TLS 1.3 keys"))?;
        Secret::new(update(keys).map_err(|e| invalid(e.to_string()))?)
    }
}

fn record_len(len: usize) -> std::io::Result<[u8; 2]> {
    u16::try_from(len)
        .map(u16::to_be_bytes)
        .map_err(|_| invalid("TLS record too long"))
}

/// TLS 1.2's additional data: sequence number, type, version and plaintext length.
fn tls12_aad(seq: u64, kind: u8, len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = kind;
    aad[9..11].copy_from_slice(&[3, 3]);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}
