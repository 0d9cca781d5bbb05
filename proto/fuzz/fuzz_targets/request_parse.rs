//! Any bytes as a Ping body and as a query string: parsed or refused, never a panic.
#![no_main]

use dp_proto::ping::PingRequest;
use dp_proto::query::EasRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = PingRequest::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = EasRequest::parse_query(text);
    }
});
