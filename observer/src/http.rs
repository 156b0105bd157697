//! `/metrics` and `/healthz`, and nothing else.
//!
//! Bounded: at most `MAX_CONNECTIONS` connections at once (fewer under a low
//! open-file limit), the first byte and then the whole header due within
//! `HEADER_TIMEOUT`, headers no larger than `MAX_HEADER_BYTES`, every
//! connection closed at `CONNECTION_DEADLINE`, accept errors (EMFILE) waited
//! out rather than retried in a spin. So idle, slow or malformed clients cost
//! a bounded amount of memory (an idle one: its socket and a small task, no
//! buffer) and free their slot quickly, and a scrape still gets through.
//! `/metrics` reads `/proc` on the blocking pool, never on the runtime thread.

use std::{
    convert::Infallible,
    io,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{Method, Response, StatusCode, body::Bytes, header, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use log::{debug, warn};
use prometheus_client::registry::Registry;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    agent::Shared,
    metrics::{self, Metrics},
    target,
};

/// Most connections served at once. Beyond it (or beyond what the file
/// descriptor limit leaves, see [`connection_limit`]) the accept loop waits
/// for a slot, so further clients wait in the kernel's listen backlog and
/// cost the observer nothing.
const MAX_CONNECTIONS: usize = 1024;
/// Fewest connection slots, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 16;
/// Descriptors kept for everything but connections: BPF programs, maps and
/// links, the listener, `/proc` reads, logging.
const FD_RESERVE: u64 = 128;
/// A client must send its first byte, then its whole header, within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
/// Every connection is closed this long after it was accepted.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Largest read buffer (request line and headers) per connection; a larger
/// header gets 431. hyper allows no less than 8 KiB.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Back-off after an accept error such as EMFILE: from the first to the
/// last value, doubling while the errors go on.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct State {
    registry: Registry,
    metrics: Metrics,
    shared: Arc<Shared>,
    /// A sweep older than this makes `/healthz` fail.
    stale_after: Duration,
    max_pids: usize,
    /// Whether PSS is read (the kernel has `smaps_rollup`).
    pss: bool,
    /// One scrape at a time samples memory and encodes: two at once would
    /// interleave clearing and filling the per-process series.
    scrape: Mutex<()>,
}

impl State {
    pub fn new(
        registry: Registry,
        metrics: Metrics,
        shared: Arc<Shared>,
        stale_after: Duration,
        max_pids: usize,
        pss: bool,
    ) -> Self {
        State { registry, metrics, shared, stale_after, max_pids, pss, scrape: Mutex::new(()) }
    }
}

/// Connection slots: [`MAX_CONNECTIONS`], fewer when the soft limit on open
/// files would run out first (a limit of 1024 leaves 896).
fn connection_limit() -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return MAX_CONNECTIONS;
    }
    let room = usize::try_from(lim.rlim_cur.saturating_sub(FD_RESERVE)).unwrap_or(MAX_CONNECTIONS);
    room.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// How long to wait after an accept error before accepting again.
///
/// Errors about one connection (the client reset it before we took it)
/// are skipped at once; anything else, descriptor or memory exhaustion
/// above all, would come straight back: accepting in a loop would spin a
/// core. Those wait, longer while they go on, and are logged once per run
/// of errors.
#[derive(Debug, Default)]
struct AcceptBackoff {
    next: Option<Duration>,
}

impl AcceptBackoff {
    fn on_error(&mut self, e: &io::Error) -> Option<Duration> {
        if matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
        ) || e.raw_os_error() == Some(libc::EPROTO)
        {
            debug!("accept: {e}");
            return None;
        }
        let wait = match self.next {
            None => {
                let hint = match e.raw_os_error() {
                    Some(libc::EMFILE) => " (open file limit of this process reached; raise LimitNOFILE / ulimit -n)",
                    Some(libc::ENFILE) => " (system-wide open file limit reached)",
                    _ => "",
                };
                warn!("accepting HTTP connections failed: {e}{hint}; retrying with back-off");
                ACCEPT_BACKOFF_FIRST
            }
            Some(d) => d,
        };
        self.next = Some((wait * 2).min(ACCEPT_BACKOFF_MAX));
        Some(wait)
    }

    fn on_success(&mut self) {
        if self.next.take().is_some() {
            debug!("accepting HTTP connections again");
        }
    }
}

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let limit = connection_limit();
    debug!("serving at most {limit} connections at once");
    let slots = Arc::new(Semaphore::new(limit));
    let mut backoff = AcceptBackoff::default();
    loop {
        // A slot first, then accept: a client beyond the limit waits in the
        // listen backlog until an earlier one is done or timed out.
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                drop(permit);
                if let Some(wait) = backoff.on_error(&e) {
                    tokio::time::sleep(wait).await;
                }
                continue;
            }
        };
        backoff.on_success();
        let state = state.clone();
        tokio::spawn(async move {
            // Until its first byte arrives a connection is only a socket and
            // this small task; hyper's read buffer comes with the request.
            // (A peek, not `readable()`: tokio may report a fresh socket
            // readable before anything came, and a peek that finds nothing
            // waits for real data.)
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(Ok(_)) => return,
                Ok(Err(e)) => {
                    debug!("{peer}: {e}");
                    return;
                }
                Err(_) => {
                    debug!("closing {peer}: nothing sent within {HEADER_TIMEOUT:?}");
                    return;
                }
            }
            // Boxed, so a waiting task does not reserve room for it.
            Box::pin(serve_connection(stream, state)).await;
            drop(permit);
        });
    }
}

async fn serve_connection(stream: TcpStream, state: Arc<State>) {
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let state = state.clone();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        async move { Ok::<_, Infallible>(route(state, &method, &path).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn route(state: Arc<State>, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n");
    }
    match path {
        "/metrics" => {
            // Reading /proc blocks (smaps_rollup walks the targets' page
            // tables): never on the runtime thread, which serves everyone.
            let s = state.clone();
            match tokio::task::spawn_blocking(move || scrape(&s)).await {
                Ok(Ok(text)) => reply(StatusCode::OK, OPENMETRICS, text),
                Ok(Err(_)) | Err(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n"),
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

/// Samples the targets' memory now, at scrape time rather than at the last
/// sweep, and encodes every metric. Blocking.
fn scrape(state: &State) -> Result<String, std::fmt::Error> {
    let _one = state.scrape.lock().unwrap_or_else(PoisonError::into_inner);
    let pids = state.shared.pids.lock().map(|p| p.clone()).unwrap_or_default();
    // One read of each process's files serves the sums and the per-process series.
    let memory = target::sample_memory(&pids, state.pss);
    state.metrics.publish_memory(&memory, state.max_pids);
    metrics::encode(&state.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_back_off_and_reset() {
        let mut b = AcceptBackoff::default();
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(b.on_error(&reset), None, "a client's own failure is skipped at once");
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        let waits: Vec<_> = (0..10).filter_map(|_| b.on_error(&emfile)).collect();
        assert_eq!(waits.len(), 10);
        assert_eq!(waits[0], ACCEPT_BACKOFF_FIRST);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(waits[9], ACCEPT_BACKOFF_MAX);
        b.on_success();
        assert_eq!(b.on_error(&io::Error::from_raw_os_error(libc::ENOBUFS)), Some(ACCEPT_BACKOFF_FIRST));
    }

    #[test]
    fn connection_limit_leaves_room_for_other_descriptors() {
        let n = connection_limit();
        assert!((MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&n));
    }
}
