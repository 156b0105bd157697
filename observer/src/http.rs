//! `/metrics` and `/healthz`, and nothing else.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections at once, headers due within
//! `HEADER_TIMEOUT`, every connection closed at `CONNECTION_DEADLINE`; so
//! idle, slow or malformed clients cost a bounded amount of memory and free
//! their slot quickly, and a scrape still gets through.

use std::{
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::debug;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{agent::Shared, metrics::{self, Metrics}, target};

const MAX_CONNECTIONS: usize = 512;
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct State {
    pub registry: Registry,
    pub metrics: Metrics,
    pub shared: Arc<Shared>,
    /// A sweep older than this makes `/healthz` fail.
    pub stale_after: Duration,
    pub max_pids: usize,
}

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else { continue };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            debug!("refusing {peer}: {MAX_CONNECTIONS} connections busy");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn route<B>(state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            // RSS is sampled now, at scrape time, not at the last sweep.
            let pids = state.shared.pids.lock().map(|p| p.clone()).unwrap_or_default();
            // One read of each process's status serves the sum and the
            // per-process series.
            let each = target::rss_each(&pids);
            let (rss, anon) = target::sum_rss(&each).unwrap_or((0, 0));
            state.metrics.target_rss.set(rss as i64);
            state.metrics.target_rss_anon.set(anon as i64);
            if let Some(per) = &state.metrics.per_pid {
                per.rss.clear();
                for &(pid, r, _) in each.iter().take(state.max_pids) {
                    per.rss.get_or_create(&metrics::PidLabel { pid }).set(r as i64);
                }
            }
            match metrics::encode(&state.registry) {
                Ok(text) => reply(StatusCode::OK, OPENMETRICS, text),
                Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n"),
            }
        }
        "/sockets" => {
            let text = state.shared.listing.lock().map(|l| Arc::clone(&l)).unwrap_or_default();
            reply(StatusCode::OK, "text/plain; charset=utf-8", text.as_bytes().to_vec())
        }
        "/healthz" => {
            let last = state.shared.last_sweep.lock().map(|l| *l).unwrap_or(None);
            match last {
                Some(t) if Instant::now().duration_since(t) <= state.stale_after => {
                    reply(StatusCode::OK, "text/plain", "ok\n")
                }
                Some(t) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("last successful sweep {:.1}s ago\n", t.elapsed().as_secs_f64()),
                ),
                None => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "no sweep yet\n"),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found: try /metrics, /sockets or /healthz\n"),
    }
}
