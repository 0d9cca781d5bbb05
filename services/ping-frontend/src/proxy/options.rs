//! OPTIONS: the upstream's own answer (its protocol versions and commands, not a list of ours),
//! kept for a few minutes so that a fleet of devices asking at start-up costs the upstream one
//! request. Only a bodiless 200 to a request with credentials is kept, and only such requests
//! are answered from it: a device without credentials still hears the upstream's challenge.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::headers;

/// How long an answer is kept.
const KEEP: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct OptionsCache(Mutex<Option<(Instant, Vec<u8>)>>);

impl OptionsCache {
    /// The kept answer, as bytes to write, if it is fresh.
    pub fn answer(&self, keep_alive: bool) -> Option<Vec<u8>> {
        let kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (at, lines) = kept.as_ref()?;
        if at.elapsed() > KEEP {
            return None;
        }
        let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
        out.extend_from_slice(lines);
        out.extend_from_slice(b"Content-Length: 0\r\n");
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        Some(out)
    }

    /// Keeps a bodiless 200 answer's end-to-end headers.
    pub fn keep(&self, answer: &reqwest::Response) {
        let bodiless = answer.content_length() == Some(0);
        if answer.status() != reqwest::StatusCode::OK || !bodiless {
            return;
        }
        let mut lines = Vec::new();
        for (name, value) in answer.headers() {
            if headers::crosses(name.as_str(), b"") && name != reqwest::header::CONTENT_LENGTH {
                lines.extend_from_slice(name.as_str().as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value.as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
        }
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), lines));
    }
}
