//! The admin port: `/healthz` (the process runs), `/readyz` (it can do its job: the service
//! says what that means) and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::shutdown::Drain;

/// Answers `Ok` when ready, or the reasons it is not.
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    ready: ReadinessCheck,
}

/// The admin routes, for a service to serve or to extend.
pub fn router(registry: Arc<Registry>, ready: ReadinessCheck) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState { registry, ready })
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match (state.ready)().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reasons}\n"),
        ),
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        tracing::error!(error = %err, "metrics could not be encoded");
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            String::new(),
        );
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
}

/// Serves `router` on `listener` until the drain signal.
pub async fn serve(listener: TcpListener, router: Router, mut drain: Drain) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { drain.signalled().await })
        .await
}
