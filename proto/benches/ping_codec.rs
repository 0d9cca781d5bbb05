//! Decoding and encoding of a typical Ping request and response.
//! Run: `cargo bench -p dp-proto --bench ping_codec`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dp_proto::ping::{FolderClass, PingFolder, PingRequest, PingResponse};

/// A phone's usual Ping: heartbeat and the four folders it watches.
fn typical_request() -> PingRequest {
    let folder = |id: &str, class| PingFolder {
        id: id.into(),
        class,
    };
    PingRequest {
        heartbeat: Some(1680),
        folders: Some(vec![
            folder("5", FolderClass::Email),
            folder("2", FolderClass::Calendar),
            folder("3", FolderClass::Contacts),
            folder("4", FolderClass::Tasks),
        ]),
    }
}

fn codec(c: &mut Criterion) {
    let request = typical_request();
    let body = request.encode().expect("encodes");
    let status2 = PingResponse::changes(vec!["5".into()]);
    let status2_bytes = status2.encode();

    c.bench_function("ping request: decode + validate", |b| {
        b.iter(|| PingRequest::parse(black_box(&body)))
    });
    c.bench_function("ping request: encode", |b| {
        b.iter(|| black_box(&request).encode())
    });
    c.bench_function("ping response status 1: encode", |b| {
        b.iter(|| PingResponse::expired().encode())
    });
    c.bench_function("ping response status 2: encode", |b| {
        b.iter(|| black_box(&status2).encode())
    });
    c.bench_function("ping response status 2: decode", |b| {
        b.iter(|| PingResponse::parse(black_box(&status2_bytes)))
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
