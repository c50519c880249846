//! Automatic propagation of the mesh headers from an agent's inbound call to its onward calls.
//!
//! The mesh refuses loops, shrinks deadlines hop by hop and continues traces only when an
//! agent copies `x-mesh-chain`, `x-mesh-deadline-ms`, `traceparent` and `tracestate` from the
//! request it is serving onto every call it makes while serving it. Wrap the agent's handlers
//! in [`MeshLayer`] (a tower layer, so also an axum one), or run the handling future in
//! [`Inbound::scope`], and every [`Client`](crate::Client) call made while serving sends them
//! on:
//!
//! ```no_run
//! # async fn doc() {
//! use axum::{routing::post, Router};
//! let app: Router = Router::new()
//!     .route("/relay.echo", post(|| async { "…" }))
//!     .layer(agentmesh_client::MeshLayer::new());
//! # }
//! ```
//!
//! The headers live in a tokio task-local for the duration of the handler's future, so
//! concurrent requests never see each other's. A task spawned from a handler does not inherit
//! them: carry them with `Inbound::current()` and [`Inbound::scope`]. The deadline sent on is
//! what is left of the inbound one (the time already spent serving is subtracted, at least
//! 1 ms), or the caller's own deadline if that is shorter. Same rules as the Python client's
//! `agentmesh.propagation`.

use http::HeaderMap;
use std::future::Future;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Inbound chain token header (opaque; the node checks it).
pub const CHAIN_HEADER: &str = "x-mesh-chain";
/// Inbound and outbound deadline header, whole milliseconds.
pub const DEADLINE_HEADER: &str = "x-mesh-deadline-ms";
/// The headers copied from an inbound call to its onward calls.
pub const MESH_HEADERS: [&str; 4] = [CHAIN_HEADER, DEADLINE_HEADER, "traceparent", "tracestate"];
/// Longest header value kept, in bytes (a chain token of the default hop limit is far
/// shorter); a longer one is dropped, not truncated.
pub const HEADER_VALUE_LEN_MAX: usize = 8192;

tokio::task_local! {
    static INBOUND: Inbound;
}

/// The mesh headers of the request being served, and when it arrived.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// `(name, value)` of the [`MESH_HEADERS`] present, names lowercase.
    headers: Vec<(&'static str, String)>,
    /// When the request arrived (the deadline left is measured from here).
    received: Instant,
}

/// What an onward call carries: the headers to copy and the deadline to send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outbound {
    /// Headers to send as they are (chain and trace context; never the deadline).
    pub headers: Vec<(&'static str, String)>,
    /// The deadline to send, in ms: the shorter of the caller's own and what is left of the
    /// inbound one; None when neither is set.
    pub deadline_ms: Option<u64>,
}

impl Inbound {
    /// Picks the mesh headers out of an inbound request's headers, received now.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self::from_headers_at(headers, Instant::now())
    }

    /// [`Inbound::from_headers`] received at `received`.
    pub fn from_headers_at(headers: &HeaderMap, received: Instant) -> Self {
        let headers = MESH_HEADERS
            .iter()
            .filter_map(|name| {
                let v = headers.get(*name)?.to_str().ok()?;
                (v.len() <= HEADER_VALUE_LEN_MAX).then(|| (*name, v.to_string()))
            })
            .collect();
        Inbound { headers, received }
    }

    /// The request being served by this task, if any (inside [`MeshLayer`] or
    /// [`Inbound::scope`]).
    pub fn current() -> Option<Inbound> {
        INBOUND.try_with(Clone::clone).ok()
    }

    /// Runs `fut` as serving this request: calls made inside carry its headers.
    pub fn scope<F: Future>(self, fut: F) -> tokio::task::futures::TaskLocalFuture<Inbound, F> {
        INBOUND.scope(self, fut)
    }

    /// The value of one mesh header, if it came with the request.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// What an onward call sends `spent` after the request arrived, given the caller's own
    /// deadline in ms. Pure, so the rules are testable without a clock.
    pub fn outbound_after(&self, spent: Duration, own_deadline_ms: Option<u64>) -> Outbound {
        let headers = self
            .headers
            .iter()
            .filter(|(n, _)| *n != DEADLINE_HEADER)
            .cloned()
            .collect();
        let left = self
            .get(DEADLINE_HEADER)
            .filter(|raw| !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|raw| raw.parse::<u64>().ok())
            .map(|ms| {
                let spent_ms = u64::try_from(spent.as_millis()).unwrap_or(u64::MAX);
                ms.saturating_sub(spent_ms).max(1)
            });
        let deadline_ms = match (left, own_deadline_ms) {
            (Some(l), Some(o)) => Some(l.min(o)),
            (l, o) => l.or(o),
        };
        Outbound {
            headers,
            deadline_ms,
        }
    }

    /// What an onward call sends now.
    pub fn outbound(&self, own_deadline_ms: Option<u64>) -> Outbound {
        self.outbound_after(self.received.elapsed(), own_deadline_ms)
    }
}

/// What an onward call made now sends: from the request being served, or only the caller's
/// own deadline outside one.
pub fn outbound(own_deadline_ms: Option<u64>) -> Outbound {
    match INBOUND.try_with(|i| i.outbound(own_deadline_ms)) {
        Ok(o) => o,
        Err(_) => Outbound {
            headers: Vec::new(),
            deadline_ms: own_deadline_ms,
        },
    }
}

/// A tower [`Layer`](tower::Layer) (and so an axum layer) that serves each request inside
/// [`Inbound::scope`] of its mesh headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeshLayer;

impl MeshLayer {
    /// The layer.
    pub fn new() -> Self {
        MeshLayer
    }
}

impl<S> tower::Layer<S> for MeshLayer {
    type Service = MeshService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MeshService { inner }
    }
}

/// The service [`MeshLayer`] wraps around a handler.
#[derive(Debug, Clone)]
pub struct MeshService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MeshService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<Inbound, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inbound = Inbound::from_headers(req.headers());
        // The synchronous part of the inner call sees the headers too, not only its future.
        let fut = INBOUND.sync_scope(inbound.clone(), || self.inner.call(req));
        INBOUND.scope(inbound, fut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound(pairs: &[(&str, &str)]) -> Inbound {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Inbound::from_headers_at(&h, Instant::now())
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// (inbound deadline header, ms spent, caller's own deadline) → deadline sent on.
    #[test]
    fn deadline_sent_on() {
        type Case<'a> = (Option<&'a str>, u64, Option<u64>, Option<u64>);
        let cases: &[Case] = &[
            (None, 0, None, None),
            (None, 50, Some(700), Some(700)),
            (Some("1000"), 300, None, Some(700)),
            (Some("1000"), 300, Some(500), Some(500)),
            (Some("1000"), 300, Some(900), Some(700)),
            (Some("1000"), 5000, None, Some(1)),
            (Some("abc"), 0, None, None),
            (Some("-5"), 0, Some(40), Some(40)),
            (Some(""), 0, None, None),
        ];
        for &(raw, spent, own, want) in cases {
            let mut pairs = vec![("x-mesh-chain", "abcd")];
            if let Some(r) = raw {
                pairs.push((DEADLINE_HEADER, r));
            }
            let o = inbound(&pairs).outbound_after(Duration::from_millis(spent), own);
            assert_eq!(o.deadline_ms, want, "{raw:?} {spent} {own:?}");
            assert_eq!(o.headers, vec![(CHAIN_HEADER, "abcd".to_string())]);
        }
    }

    #[test]
    fn only_mesh_headers_are_kept_and_overlong_ones_dropped() {
        let long = "a".repeat(HEADER_VALUE_LEN_MAX + 1);
        let i = inbound(&[
            ("X-Mesh-Chain", "c0ffee"),
            ("traceparent", TP),
            ("tracestate", &long),
            ("authorization", "Bearer secret"),
            ("x-mesh-attr-region", "eu"),
        ]);
        let o = i.outbound_after(Duration::ZERO, None);
        assert_eq!(
            o.headers,
            vec![
                (CHAIN_HEADER, "c0ffee".to_string()),
                ("traceparent", TP.to_string())
            ]
        );
    }

    #[tokio::test]
    async fn the_layer_scopes_headers_to_the_request() {
        use tower::{Layer, Service};
        let svc = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(outbound(Some(60_000)))
        });
        let mut svc = MeshLayer::new().layer(svc);
        let req = http::Request::builder()
            .header("x-mesh-chain", "beef")
            .header(DEADLINE_HEADER, "5000")
            .body(())
            .unwrap();
        let o = svc.call(req).await.unwrap();
        assert_eq!(o.headers, vec![(CHAIN_HEADER, "beef".to_string())]);
        let left = o.deadline_ms.unwrap();
        assert!((4000..=5000).contains(&left), "{left}");
        // Outside a request: nothing is carried.
        assert_eq!(
            outbound(Some(7)),
            Outbound {
                headers: vec![],
                deadline_ms: Some(7)
            }
        );
        assert!(Inbound::current().is_none());
        // Two requests in flight at once see their own headers.
        let req = |c: &str| {
            http::Request::builder()
                .header("x-mesh-chain", c)
                .body(())
                .unwrap()
        };
        let (a, b) = (svc.call(req("aa")), svc.call(req("bb")));
        let (a, b) = tokio::join!(a, b);
        assert_eq!(a.unwrap().headers[0].1, "aa");
        assert_eq!(b.unwrap().headers[0].1, "bb");
    }
}
