//! Any bytes as what a device sends: the HTTP head parser, then the query and the Ping body it
//! frames. Parsed or refused, never a panic.
#![no_main]

use dp_proto::ping::PingRequest;
use dp_proto::query::EasRequest;
use libfuzzer_sys::fuzz_target;
use ping_frontend::http::request::{parse_head, SizeLimits};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((head_len, request, body_len))) = parse_head(data, SizeLimits::default()) {
        let _ = EasRequest::parse_query(&request.query);
        let body = data.get(head_len..).unwrap_or_default();
        let _ = PingRequest::parse(&body[..body.len().min(body_len)]);
    }
});
