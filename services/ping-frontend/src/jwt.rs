//! `AUTH_MODE=jwt`: bearer tokens signed with an HS256 secret, or with RS256/ES256 keys from a
//! JWKS file; issuer, audience and expiry are required and checked; the mailbox is a claim.

use std::path::Path;

use dp_proto::ids::canonical_mailbox;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};

/// The JWT settings, checked at start-up.
#[derive(Clone)]
pub struct JwtSettings {
    keys: Vec<Key>,
    issuer: String,
    audience: String,
    claim: String,
    leeway_secs: u64,
}

impl std::fmt::Debug for JwtSettings {
    /// Keys (and the secret among them) stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSettings")
            .field("keys", &self.keys.len())
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claim", &self.claim)
            .finish()
    }
}

#[derive(Clone)]
struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    decoding: DecodingKey,
}

impl JwtSettings {
    /// Exactly one of `secret` (HS256) and `jwks` (a JWKS file of RS256/ES256 keys).
    pub fn new(
        secret: Option<&str>,
        jwks: Option<&Path>,
        issuer: String,
        audience: String,
        claim: String,
        leeway_secs: u64,
    ) -> Result<JwtSettings, String> {
        let keys = match (secret, jwks) {
            (Some(secret), None) => {
                if secret.len() < 32 {
                    return Err("JWT_SECRET must be at least 32 bytes".into());
                }
                vec![Key {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    decoding: DecodingKey::from_secret(secret.as_bytes()),
                }]
            }
            (None, Some(path)) => load_jwks(path)?,
            _ => return Err("set exactly one of JWT_SECRET and JWT_JWKS_FILE".into()),
        };
        if issuer.is_empty() || audience.is_empty() {
            return Err("JWT_ISSUER and JWT_AUDIENCE are required".into());
        }
        Ok(JwtSettings {
            keys,
            issuer,
            audience,
            claim,
            leeway_secs,
        })
    }

    /// The mailbox a valid token names, or `None` for any defect (bad signature, algorithm
    /// other than the key's, wrong issuer or audience, expired, missing claim).
    pub fn verify(&self, token: &str) -> Option<String> {
        let header = decode_header(token).ok()?;
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))?,
            None if self.keys.len() == 1 => &self.keys[0],
            None => return None,
        };
        if header.alg != key.algorithm {
            return None;
        }
        let mut validation = Validation::new(key.algorithm);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        let data =
            decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &validation)
                .ok()?;
        let mailbox = canonical_mailbox(data.claims.get(&self.claim)?.as_str()?);
        (!mailbox.is_empty()).then_some(mailbox)
    }
}

fn load_jwks(path: &Path) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a JWKS: {e}", path.display()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match (&jwk.common.key_algorithm, &jwk.algorithm) {
            (Some(KeyAlgorithm::RS256), _) | (None, AlgorithmParameters::RSA(_)) => {
                Algorithm::RS256
            }
            (Some(KeyAlgorithm::ES256), _) => Algorithm::ES256,
            (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            _ => {
                return Err(format!(
                    "{}: key {:?} is not RS256 or ES256",
                    path.display(),
                    jwk.common.key_id
                ))
            }
        };
        let decoding =
            DecodingKey::from_jwk(jwk).map_err(|e| format!("{}: {e}", path.display()))?;
        keys.push(Key {
            kid: jwk.common.key_id.clone(),
            algorithm,
            decoding,
        });
    }
    if keys.is_empty() {
        return Err(format!("{}: no keys", path.display()));
    }
    Ok(keys)
}
