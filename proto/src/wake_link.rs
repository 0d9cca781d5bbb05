//! The direct wake link: a watcher's own TCP connection to one frontend (the frontend's
//! `WAKE_LISTEN_ADDR`), carrying the same [`WakeEvent`](crate::events::WakeEvent) JSON that the
//! pod's NATS wake subject carries, one hop shorter (no NATS server between them).
//!
//! Every frame is a 4-byte big-endian length, then that many bytes of body.
//! - watcher to frontend: a [`Hello`] (JSON) first, then one frame per wake: a byte with the
//!   traceparent's length (0: none), the traceparent, then the wake's JSON;
//! - frontend to watcher: a [`HelloReply`] (JSON), then acknowledgements: 8 bytes, big-endian,
//!   the number of wakes handled on this link so far. A wake is handled once the Pings it names
//!   were told; the watcher counts a wake as delivered only then, and sends any wake a link
//!   never acknowledged over NATS instead (I1: a duplicate at worst, never a loss).

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts. A wake is split under the NATS server's
/// `max_payload` (1 MiB by default, 64 MiB at most) before it is sent either way.
pub const MAX_FRAME: usize = 64 << 20;

/// The watcher's first frame: whom it means to reach, and the shared secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub namespace: String,
    /// The pod the watcher found at this address. A pod that restarted elsewhere may have left
    /// its address to another: wakes for one pod's Pings mean nothing to another's.
    pub pod: String,
    /// `WAKE_SECRET`, or empty.
    #[serde(default)]
    pub secret: String,
}

/// The frontend's answer to a [`Hello`]; a refusal is followed by the end of the connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME} allowed")]
    TooLarge(usize),
    #[error("a wake frame is cut short")]
    Truncated,
    #[error("the traceparent is not UTF-8")]
    Traceparent,
    #[error("an acknowledgement is {0} bytes, not 8")]
    Ack(usize),
}

impl Hello {
    /// Whether a frontend of `namespace`, pod `pod`, holding `secret` (empty: none asked for)
    /// takes this link; the reason it refuses otherwise.
    pub fn check(&self, namespace: &str, pod: &str, secret: &str) -> Result<(), String> {
        if self.namespace != namespace {
            return Err(format!(
                "namespace {:?} is not this pod's {namespace:?}",
                self.namespace
            ));
        }
        if self.pod != pod {
            return Err(format!(
                "the watcher wants pod {:?}; this is {pod:?}",
                self.pod
            ));
        }
        if !same_secret(self.secret.as_bytes(), secret.as_bytes()) {
            return Err("wrong WAKE_SECRET".into());
        }
        Ok(())
    }
}

/// Compares in time that depends on the lengths only, not on where the secrets differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The length a frame header announces, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, LinkError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    Ok(len)
}

/// Appends `body` to `out` as one frame.
pub fn put_frame(out: &mut Vec<u8>, body: &[u8]) -> Result<(), LinkError> {
    if body.len() > MAX_FRAME {
        return Err(LinkError::TooLarge(body.len()));
    }
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Appends a wake frame: `payload` is a WakeEvent's JSON. A traceparent longer than 255 bytes
/// is not a W3C traceparent (55 bytes) and is left out.
pub fn put_wake(
    out: &mut Vec<u8>,
    traceparent: Option<&str>,
    payload: &[u8],
) -> Result<(), LinkError> {
    let trace = traceparent.filter(|t| t.len() <= 255).unwrap_or("");
    let len = 1 + trace.len() + payload.len();
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(trace.len() as u8);
    out.extend_from_slice(trace.as_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// A wake frame's body: its traceparent, if any, and the wake's JSON.
pub fn split_wake(body: &[u8]) -> Result<(Option<&str>, &[u8]), LinkError> {
    let (&len, rest) = body.split_first().ok_or(LinkError::Truncated)?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(LinkError::Truncated);
    }
    let (trace, payload) = rest.split_at(len);
    let trace = std::str::from_utf8(trace).map_err(|_| LinkError::Traceparent)?;
    Ok(((!trace.is_empty()).then_some(trace), payload))
}

/// An acknowledgement frame, whole: `handled` wakes so far.
pub fn ack_frame(handled: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[..4].copy_from_slice(&8u32.to_be_bytes());
    out[4..].copy_from_slice(&handled.to_be_bytes());
    out
}

/// The count an acknowledgement's body carries.
pub fn parse_ack(body: &[u8]) -> Result<u64, LinkError> {
    let bytes: [u8; 8] = body.try_into().map_err(|_| LinkError::Ack(body.len()))?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(mut bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = frame_len(bytes[..4].try_into().expect("as expected")).expect("as expected");
            out.push(&bytes[4..4 + len]);
            bytes = &bytes[4 + len..];
        }
        out
    }

    #[test]
    fn wakes_and_acks_come_back_as_they_went() {
        let mut out = Vec::new();
        put_wake(&mut out, Some("00-abc-def-01"), br#"{"mailbox":"m"}"#).expect("as expected");
        put_wake(&mut out, None, b"{}").expect("as expected");
        put_wake(&mut out, Some(&"x".repeat(300)), b"[]").expect("as expected");
        put_frame(&mut out, b"hello").expect("as expected");
        out.extend_from_slice(&ack_frame(7));
        let parts = frames(&out);
        assert_eq!(parts.len(), 5);
        assert_eq!(
            split_wake(parts[0]).expect("as expected"),
            (Some("00-abc-def-01"), &br#"{"mailbox":"m"}"#[..])
        );
        assert_eq!(
            split_wake(parts[1]).expect("as expected"),
            (None, &b"{}"[..])
        );
        assert_eq!(
            split_wake(parts[2]).expect("as expected"),
            (None, &b"[]"[..]),
            "an overlong traceparent is dropped, the wake kept"
        );
        assert_eq!(parts[3], b"hello");
        assert_eq!(parse_ack(parts[4]), Ok(7));
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        assert_eq!(split_wake(b""), Err(LinkError::Truncated));
        assert_eq!(split_wake(b"\x05abc"), Err(LinkError::Truncated));
        assert_eq!(split_wake(b"\x02\xff\xfe{}"), Err(LinkError::Traceparent));
        assert_eq!(parse_ack(b"1234"), Err(LinkError::Ack(4)));
        assert_eq!(
            frame_len(u32::MAX.to_be_bytes()),
            Err(LinkError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn a_hello_must_name_this_namespace_and_pod_and_hold_its_secret() {
        let hello = Hello {
            namespace: "dp".into(),
            pod: "fe-1".into(),
            secret: "s3cret".into(),
        };
        assert_eq!(hello.check("dp", "fe-1", "s3cret"), Ok(()));
        assert!(hello.check("other", "fe-1", "s3cret").is_err());
        let moved = hello.check("dp", "fe-2", "s3cret").expect_err("an error");
        assert!(moved.contains("fe-1"), "{moved}");
        assert_eq!(
            hello.check("dp", "fe-1", "s3creT"),
            Err("wrong WAKE_SECRET".into())
        );
        assert!(
            hello.check("dp", "fe-1", "").is_err(),
            "a secret where none is set"
        );
        let none = Hello {
            secret: String::new(),
            ..hello
        };
        assert_eq!(none.check("dp", "fe-1", ""), Ok(()));
        assert!(none.check("dp", "fe-1", "s3cret").is_err());
    }
}
