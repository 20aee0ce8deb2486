//! The sweeper's HTTP endpoint, on axum: `/metrics` (the Prometheus exporter's
//! text), `/healthz` (200 while Redis answers, 503 otherwise) and, when turned
//! on, the read-only status page on `/` (see [`super::status`]). GET only; every response closes its
//! connection (a scrape or a probe every few seconds needs no keep-alive).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use super::Sweeper;

/// What the endpoint serves from.
#[derive(Clone)]
pub struct Endpoint {
    /// The sweeper (its metrics, and its storage for the status page).
    pub sweeper: Arc<Sweeper>,
    /// The installed exporter's handle, rendered on `/metrics`.
    pub prometheus: PrometheusHandle,
    /// Whether `/` serves the read-only status page (see [`super::status`]).
    pub status_page: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint").finish_non_exhaustive()
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

/// The routes.
pub fn router(endpoint: Endpoint) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz));
    if endpoint.status_page {
        router = router.route("/", get(status_page));
    }
    router
        .fallback(not_found)
        .layer(axum::middleware::map_response(close_connection))
        .with_state(endpoint)
}

/// Serves until `shutdown` turns true (or its sender is gone).
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(endpoint))
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow_and_update() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
}

async fn close_connection(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn metrics(State(e): State<Endpoint>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        e.prometheus.render(),
    )
        .into_response()
}

async fn healthz(State(e): State<Endpoint>) -> Response {
    match e.sweeper.metrics().unhealthy() {
        None => ([(header::CONTENT_TYPE, TEXT)], "ok\n").into_response(),
        Some(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("unhealthy: {err}\n"),
        )
            .into_response(),
    }
}

async fn status_page(State(e): State<Endpoint>) -> Response {
    let html = super::status::render(&e.sweeper).await;
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing to load from elsewhere, no script, no form, no framing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "try /metrics or /healthz\n",
    )
        .into_response()
}
