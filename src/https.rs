//! The HTTPS serving both of our servers share (the admission webhook and the HTTP API): a
//! bounded number of connections accepted at a bounded rate, handshakes and request headers
//! within timeouts, and connections retired after a while without cutting a request.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a connection is used before its next answer says `Connection: close` (the API server
/// then reconnects): connections do not pile up, and none is closed under a request in flight.
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(120);
/// How long a retiring connection may then stay idle before it is closed: longer than the API
/// server keeps an idle connection (90 s), so it has stopped using it by then.
const RETIRING_IDLE: std::time::Duration = std::time::Duration::from_secs(120);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 512;
/// New connections accepted per second on average, and in a burst: beyond that a connection is
/// closed at once (the API server retries; a flood costs no handshakes).
const CONNECTIONS_PER_SECOND: f64 = 100.0;
const CONNECTION_BURST: f64 = 200.0;

/// A token bucket: `take` at `now` is allowed while tokens remain, refilled at `rate` per second
/// up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: std::time::Instant) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until the next token (zero when one is there).
    pub fn wait(&self) -> std::time::Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        // A rate too low to refill in any representable time waits for ever, not panics.
        std::time::Duration::try_from_secs_f64(missing / self.rate.max(f64::MIN_POSITIVE))
            .unwrap_or(std::time::Duration::MAX)
    }
}

/// Serves `app` over TLS on `listener` until `shutdown` completes (`server` names it in logs).
pub async fn serve(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: axum::Router,
    server: &'static str,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accepting = RateLimit::new(
        CONNECTIONS_PER_SECOND,
        CONNECTION_BURST,
        std::time::Instant::now(),
    );
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(server, %e, "accept failed");
                    continue;
                }
            },
        };
        if !accepting.take(std::time::Instant::now()) {
            tracing::debug!(server, %peer, "connection rate exceeded; closing");
            continue;
        }
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(server, %peer, "connection limit reached; closing");
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            // Past its lifetime, a connection's next answer asks the client to close it: closing
            // it from here could cut a request the API server is just writing (it does not
            // retry an admission review), which refuses a write for nothing.
            let retiring = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flag = retiring.clone();
            let app =
                tower::util::MapResponse::new(app, move |mut resp: axum::response::Response| {
                    if flag.load(Ordering::Relaxed) {
                        resp.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    resp
                });
            let service = TowerToHyperService::new(app);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = tokio::time::sleep(CONNECTION_LIFETIME) => {
                    retiring.store(true, Ordering::Relaxed);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = tokio::time::sleep(RETIRING_IDLE) => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn connections_are_rate_limited_with_a_burst() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10.0, 3.0, t0);
        let taken: Vec<bool> = (0..5).map(|_| limit.take(t0)).collect();
        assert_eq!(
            taken,
            [true, true, true, false, false],
            "the burst, then nothing"
        );
        assert!(!limit.take(t0 + Duration::from_millis(50)), "half a token");
        assert!(
            limit.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!limit.take(t0 + Duration::from_millis(100)));
        let later = t0 + Duration::from_secs(60);
        let refilled = (0..5).filter(|_| limit.take(later)).count();
        assert_eq!(refilled, 3, "never more than the burst");
    }

    #[test]
    fn the_wait_for_a_token_is_what_the_rate_refills_and_never_panics() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(2.0, 1.0, t0);
        assert_eq!(limit.wait(), Duration::ZERO, "a token is there");
        assert!(limit.take(t0));
        assert_eq!(limit.wait(), Duration::from_millis(500));
        let mut never = RateLimit::new(0.0, 1.0, t0);
        assert!(never.take(t0));
        assert_eq!(never.wait(), Duration::MAX);
    }
}
