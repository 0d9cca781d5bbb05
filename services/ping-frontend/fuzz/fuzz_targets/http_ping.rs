//! Any bytes as what a device sends: the HTTP head parser, then the query and the Ping body it
//! frames. Parsed or refused, never a panic.
#![no_main]

use dp_proto::ping::PingRequest;
use dp_proto::query::EasRequest;
use libfuzzer_sys::fuzz_target;
use ping_frontend::http::request::{parse_head, Framing, SizeLimits};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head_len, request))) = parse_head(data, SizeLimits::default()) {
        let _ = EasRequest::parse_query(&request.query);
        let _ = request.parts();
        let body = data.get(head_len..).unwrap_or_default();
        let body_len = match request.framing {
            Framing::Length(n) => usize::try_from(n).unwrap_or(usize::MAX),
            Framing::Chunked => 0,
        };
        let _ = PingRequest::parse(&body[..body.len().min(body_len)]);
    }
});
