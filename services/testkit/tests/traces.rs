//! OpenTelemetry: a change's trace runs from the ingest request through the dispatch to the
//! wake's answer, its context carried in NATS headers; spans caught by an in-memory exporter.

use std::time::Duration;

use dp_testkit::client::{ping_body, raw};
use dp_testkit::{Device, Env, Frontend, Watcher};
use opentelemetry::trace::{SpanId, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn span<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        panic!(
            "no span {name:?} among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_is_traced_from_ingest_to_the_wake_answer() {
    // Each test binary is its own process under nextest: this subscriber sees every service.
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .init();

    let env = Env::new().await;
    env.account("tina@example.com", "pw-tina").await;
    let frontend = Frontend::start(&env, "a", &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let mut phone = Device::new(frontend.addr, "tina@example.com", "pw-tina", "phone");
    let parked = tokio::spawn(async move {
        phone
            .ping_within(Some(&ping_body(30, &["5"])), Duration::from_secs(10))
            .await
    });
    env.wait_parked("tina@example.com", "phone", "a", None)
        .await;

    // The mail system's own trace comes in with the change.
    let body = r#"{"mailbox":"tina@example.com","folders":["5"]}"#;
    let request = format!(
        "POST /v1/changes HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         traceparent: 00-{CALLER_TRACE}-{CALLER_SPAN}-01\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        env.ingest_token,
        body.len()
    );
    let accepted = raw(watcher.addr, request.as_bytes())
        .await
        .expect("ingest answers");
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let answer = parked.await.expect("ping task").ping();
    assert_eq!(answer.folders, vec!["5".to_owned()]);

    // The answer's span ends after the Status 2 is written: wait for it, with a deadline.
    let spans = dp_testkit::wait_for("the wake's answer span", Duration::from_secs(10), || {
        let exporter = exporter.clone();
        async move {
            let spans = exporter.get_finished_spans().ok()?;
            spans
                .iter()
                .any(|s| s.name == "answer wake")
                .then_some(spans)
        }
    })
    .await;
    let trace = TraceId::from_hex(CALLER_TRACE).expect("trace id");
    let ingest = span(&spans, "ingest changes");
    let dispatch = span(&spans, "dispatch change");
    let wake = span(&spans, "answer wake");
    for s in [ingest, dispatch, wake] {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} continues the caller's trace",
            s.name
        );
    }
    assert_eq!(
        ingest.parent_span_id,
        SpanId::from_hex(CALLER_SPAN).expect("span id")
    );
    assert_eq!(
        dispatch.parent_span_id,
        ingest.span_context.span_id(),
        "ingest -> dispatch (JetStream header)"
    );
    assert_eq!(
        wake.parent_span_id,
        dispatch.span_context.span_id(),
        "dispatch -> answer (wake header)"
    );
    env.cleanup().await;
}
