//! Session tickets under keys the operator gives every pod (`TLS_TICKET_KEYS`), so a device
//! resumes on whichever pod it reaches next: after a pod's loss or a rolling update, the
//! devices it held come back to the others with tickets those can open. Without the file each
//! pod keeps rustls's own ticketer, whose keys are random and die with the process.
//!
//! The file holds one key per line, base64, at least 32 random bytes each (`openssl rand
//! -base64 48`); blank lines and `#` comments are skipped. The first key seals new tickets and
//! every key opens them, so a key is rotated in by putting the new one first and rotated out,
//! once `LIFETIME_SECS` has passed, by removing the last.
//!
//! A ticket is `id (8) | nonce (12) | ChaCha20-Poly1305 (ticket) | tag (16)`, with the id as
//! associated data: the id names the key without revealing it, so opening costs one lookup,
//! not a trial of every key.

use std::sync::{Arc, RwLock};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// The lifetime hint given with each ticket: a day of a phone's reconnects. Keys are rotated
/// by the operator, not by us, so the hint is also how long an old key should stay listed.
pub const LIFETIME_SECS: u32 = 24 * 3600;

const ID_LEN: usize = 8;
const MIN_KEY_BYTES: usize = 32;

struct Key {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

/// ring's HKDF writes an output of any length given as a `KeyType`.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

impl Key {
    /// Derives the sealing key and the id from the secret, so neither is the secret itself.
    fn derive(secret: &[u8]) -> Option<Key> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"directpush tls ticket key").extract(secret);
        let aead = UnboundKey::from(prk.expand(&[b"seal"], &CHACHA20_POLY1305).ok()?);
        let mut id = [0; ID_LEN];
        prk.expand(&[b"id"], Len(ID_LEN)).ok()?.fill(&mut id).ok()?;
        Some(Key {
            id,
            aead: LessSafeKey::new(aead),
        })
    }
}

/// The keys of one reading of the file, the sealing key first.
pub struct TicketKeys {
    keys: Vec<Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Ids only: the keys are secrets.
        let ids: Vec<String> = self.keys.iter().map(|k| hex_id(&k.id)).collect();
        f.debug_struct("TicketKeys").field("ids", &ids).finish()
    }
}

fn hex_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl TicketKeys {
    /// Reads the file's text; the error names the line, never its contents.
    pub fn parse(text: &str) -> Result<TicketKeys, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let secret = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|_| format!("line {}: not base64", n + 1))?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "line {}: {} bytes, at least {MIN_KEY_BYTES} needed (make one with `openssl rand -base64 48`)",
                    n + 1,
                    secret.len()
                ));
            }
            keys.push(Key::derive(&secret).ok_or_else(|| format!("line {}: unusable", n + 1))?);
        }
        if keys.is_empty() {
            return Err("no key in it".to_owned());
        }
        Ok(TicketKeys {
            keys,
            random: SystemRandom::new(),
        })
    }

    pub fn read(path: &std::path::Path) -> Result<TicketKeys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        TicketKeys::parse(&text).map_err(|reason| format!("{}: {reason}", path.display()))
    }

    /// The sealing key's id, for the log line of a rotation.
    pub fn current_id(&self) -> String {
        self.keys
            .first()
            .map_or_else(String::new, |k| hex_id(&k.id))
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let key = self.keys.first()?;
        let mut nonce = [0; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    /// `ticket` comes from the network: any length, any bytes.
    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let id = ticket.get(..ID_LEN)?;
        let nonce = ticket.get(ID_LEN..ID_LEN + NONCE_LEN)?;
        let key = self.keys.iter().find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = ticket.get(ID_LEN + NONCE_LEN..)?.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(key.id), &mut sealed)
            .ok()?;
        let len = plain.len();
        sealed.truncate(len);
        Some(sealed)
    }
}

/// rustls's ticketer over the operator's keys, which a reload replaces in place.
#[derive(Debug)]
pub struct SharedTicketer {
    keys: RwLock<Arc<TicketKeys>>,
}

impl SharedTicketer {
    pub fn new(keys: TicketKeys) -> SharedTicketer {
        SharedTicketer {
            keys: RwLock::new(Arc::new(keys)),
        }
    }

    pub fn replace(&self, keys: TicketKeys) {
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
    }

    fn keys(&self) -> Arc<TicketKeys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys().seal(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys().open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> String {
        base64::engine::general_purpose::STANDARD.encode([byte; 48])
    }

    /// A file of 48-byte keys, each all `byte`, in this order.
    fn keys(bytes: &[u8]) -> TicketKeys {
        let lines: Vec<String> = bytes.iter().map(|&b| key(b)).collect();
        TicketKeys::parse(&lines.join("\n")).expect("valid keys")
    }

    #[test]
    fn a_ticket_opens_under_the_keys_that_sealed_it_and_no_others() {
        let ticket = keys(&[1]).seal(b"session").expect("sealed");
        assert_eq!(keys(&[1]).open(&ticket).as_deref(), Some(&b"session"[..]));
        assert_eq!(
            keys(&[2, 1]).open(&ticket).as_deref(),
            Some(&b"session"[..]),
            "an older key still opens while it is listed"
        );
        assert_eq!(keys(&[2]).open(&ticket), None, "a removed key does not");
        let again = keys(&[1]).seal(b"session").expect("sealed");
        assert_ne!(ticket, again, "each ticket has its own nonce");
    }

    #[test]
    fn a_forged_or_cut_ticket_is_refused() {
        let k = keys(&[3]);
        let ticket = k.seal(b"session").expect("sealed");
        for at in [0, ID_LEN, ID_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut forged = ticket.clone();
            forged[at] ^= 1;
            assert_eq!(k.open(&forged), None, "byte {at} changed");
        }
        for len in [0, ID_LEN, ID_LEN + NONCE_LEN, ticket.len() - 1] {
            assert_eq!(k.open(&ticket[..len]), None, "cut to {len}");
        }
    }

    #[test]
    fn the_file_names_its_bad_line_and_never_a_key() {
        let short = base64::engine::general_purpose::STANDARD.encode([7; 16]);
        let err = TicketKeys::parse(&format!("# rotated daily\n\n{}\n{short}\n", key(1)))
            .expect_err("a short key");
        assert!(err.starts_with("line 4: 16 bytes"), "{err}");
        assert!(!err.contains(&short), "{err}");
        let err = TicketKeys::parse("not base64!").expect_err("not base64");
        assert_eq!(err, "line 1: not base64");
        let err = TicketKeys::parse("# only a comment\n").expect_err("empty");
        assert_eq!(err, "no key in it");
        let debug = format!("{:?}", keys(&[1]));
        assert!(!debug.contains(&key(1)), "{debug}");
    }
}
