//! The call plane: `/agentmesh/call/1` streams on a quinn endpoint of their own.
//!
//! Gossip, admission and identify stay on the libp2p swarm. Calls do not: measured on this
//! machine, a libp2p-stream call hop cost ~135 µs more than the same bytes on raw quinn (the
//! swarm task, multistream-select and a timer thread per stream), and libp2p-stream drops
//! inbound streams under a burst. This endpoint uses the *same* libp2p-tls certificates, so
//! the handshake proves the same node id (DESIGN §5). It is only used towards peers that are
//! already mutually admitted over libp2p; the callee checks admission on every stream.
//!
//! Each node advertises its call port in its member record as [`CALL_ADDR_PREFIX`]`<port>`;
//! the IP is the one the libp2p connection to that peer uses, so no address is guessed.

use agentmesh_crypto::{Keypair, NodeId};
use libp2p::PeerId;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// ALPN of the call plane (distinct from libp2p's, so neither endpoint accepts the other).
pub const CALL_ALPN: &[u8] = b"agentmesh-call/1";
/// How a member record advertises its call port: `"/agentmesh-call/<port>"` (not a
/// multiaddr, so libp2p never dials it).
pub const CALL_ADDR_PREFIX: &str = "/agentmesh-call/";
/// Outbound connections kept (one per peer; beyond this the oldest is closed).
pub const CALL_CONNECTIONS_MAX: usize = 1024;
/// Inbound connections at once.
pub const INBOUND_CONNECTIONS_MAX: usize = 4096;
/// Concurrent call streams a peer may open on one connection.
pub const CALL_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// A connection with no traffic closes after this long (keep-alives hold used ones open).
pub const CALL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alive period on call connections.
pub const CALL_KEEP_ALIVE: Duration = Duration::from_secs(5);
/// Time to set up a call connection (handshake included).
pub const CALL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Ack-eliciting packets a peer may receive before it must ACK at once (the QUIC ACK-frequency
/// extension; both ends are agentmesh). quinn's default (1) makes a two-packet answer cost an
/// ACK-only packet back and a wake-up of the callee for it; otherwise the ACK rides on the
/// caller's next packet or leaves after the max ACK delay.
pub const CALL_ACK_ELICITING_THRESHOLD: u32 = 2;

/// Why a call stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum CallPlaneError {
    /// The peer's record advertises no call port.
    #[error("peer advertises no call endpoint")]
    NoCallPort,
    /// No live libp2p connection tells us the peer's address.
    #[error("no connection to the peer")]
    NoAddress,
    /// The handshake or the connection failed.
    #[error("call connection failed: {0}")]
    Connect(String),
    /// The connection is up but a stream could not be opened.
    #[error("call stream failed: {0}")]
    Stream(String),
}

/// A bidirectional call stream.
pub type CallStream = (quinn::SendStream, quinn::RecvStream);

/// The quinn endpoint for calls, its outbound connections and what it advertises.
pub struct CallEndpoint {
    endpoint: quinn::Endpoint,
    identity: libp2p::identity::Keypair,
    port: u16,
    conns: Mutex<HashMap<NodeId, Cached>>,
    // One connect at a time per peer, so a burst of calls shares one handshake.
    connecting: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    seq: std::sync::atomic::AtomicU64,
}

/// An outbound connection, the address it went to and its age order.
struct Cached {
    seq: u64,
    addr: SocketAddr,
    conn: quinn::Connection,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(CALL_STREAMS_PER_CONNECTION_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(CALL_KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(CALL_IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(CALL_ACK_ELICITING_THRESHOLD.into());
    t.ack_frequency_config(Some(acks));
    Arc::new(t)
}

fn client_config(
    identity: &libp2p::identity::Keypair,
    peer: PeerId,
) -> Result<quinn::ClientConfig, String> {
    let mut tls =
        libp2p_tls::make_client_config(identity, Some(peer)).map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![CALL_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport_config());
    Ok(c)
}

/// The port a member record advertises, if any.
pub fn advertised_port(addrs: &[String]) -> Option<u16> {
    addrs
        .iter()
        .find_map(|a| a.strip_prefix(CALL_ADDR_PREFIX)?.parse().ok())
}

/// Reads the end of `r` if it is already here. A stream read to its end is dropped quietly;
/// otherwise quinn sends STOP_SENDING, one more frame for nothing.
pub fn take_eof(r: &mut quinn::RecvStream) {
    let mut byte = [0u8; 1];
    let _ = futures::FutureExt::now_or_never(r.read(&mut byte));
}

/// The node id the TLS handshake proved for `conn`.
fn proven_peer(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let cert = libp2p_tls::certificate::parse(certs.first()?).ok()?;
    crate::net::transport::node_of(&cert.peer_id()).ok()
}

impl CallEndpoint {
    /// Binds the endpoint on `ip:port` (port 0 picks a free one).
    pub fn bind(key: &Keypair, ip: IpAddr, port: u16) -> anyhow::Result<CallEndpoint> {
        let identity = key.to_libp2p();
        let mut tls = libp2p_tls::make_server_config(&identity)
            .map_err(|e| anyhow::anyhow!("call endpoint certificate: {e}"))?;
        tls.alpn_protocols = vec![CALL_ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| anyhow::anyhow!("call endpoint TLS: {e}"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport_config());
        let endpoint = quinn::Endpoint::server(server, SocketAddr::new(ip, port))
            .map_err(|e| anyhow::anyhow!("cannot bind the call endpoint on {ip}:{port}: {e}"))?;
        let port = endpoint.local_addr()?.port();
        Ok(CallEndpoint {
            endpoint,
            identity,
            port,
            conns: Mutex::new(HashMap::new()),
            connecting: Mutex::new(HashMap::new()),
            seq: Default::default(),
        })
    }

    /// The UDP port calls arrive on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What this node puts in its member record.
    pub fn advertisement(&self) -> String {
        format!("{CALL_ADDR_PREFIX}{}", self.port)
    }

    /// Opens a call stream to `node` at `ip:port`, connecting first if needed.
    pub async fn open(
        &self,
        node: NodeId,
        ip: IpAddr,
        port: u16,
    ) -> Result<CallStream, CallPlaneError> {
        let addr = SocketAddr::new(ip, port);
        // A cached connection first; if it died, one fresh connection.
        if let Some(conn) = self.live(&node, addr) {
            match conn.open_bi().await {
                Ok(s) => return Ok(s),
                Err(_) => self.forget_if(&node, conn.stable_id()),
            }
        }
        let gate = lock(&self.connecting).entry(node).or_default().clone();
        let conn = {
            let _one = gate.lock().await;
            match self.live(&node, addr) {
                Some(c) => Ok(c),
                None => self.connect(node, addr).await,
            }
        };
        // Removed on failure too, so the map holds only connects in progress.
        lock(&self.connecting).remove(&node);
        conn?
            .open_bi()
            .await
            .map_err(|e| CallPlaneError::Stream(e.to_string()))
    }

    /// The cached connection to `node` if it is open and goes to `addr` (a peer that
    /// restarted advertises a new port; its old connection would only time out).
    fn live(&self, node: &NodeId, addr: SocketAddr) -> Option<quinn::Connection> {
        let conns = lock(&self.conns);
        let c = conns.get(node)?;
        (c.addr == addr && c.conn.close_reason().is_none()).then(|| c.conn.clone())
    }

    fn forget_if(&self, node: &NodeId, stable_id: usize) {
        let mut conns = lock(&self.conns);
        if conns
            .get(node)
            .is_some_and(|c| c.conn.stable_id() == stable_id)
        {
            conns.remove(node);
        }
    }

    /// The smoothed round-trip time quinn measures on the open call connection to `node`.
    pub fn rtt(&self, node: &NodeId) -> Option<std::time::Duration> {
        let conns = lock(&self.conns);
        let c = conns.get(node)?;
        c.conn.close_reason().is_none().then(|| c.conn.rtt())
    }

    /// True when the connection to `node` has closed since it was used (a call that failed on
    /// it never reached the agent, so one retry on a fresh connection is safe).
    pub fn connection_lost(&self, node: &NodeId) -> bool {
        let mut conns = lock(&self.conns);
        match conns.get(node) {
            Some(c) if c.conn.close_reason().is_some() => {
                conns.remove(node);
                true
            }
            _ => false,
        }
    }

    async fn connect(
        &self,
        node: NodeId,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, CallPlaneError> {
        let peer = crate::net::transport::peer_of(&node)
            .map_err(|e| CallPlaneError::Connect(e.to_string()))?;
        let cfg = client_config(&self.identity, peer).map_err(CallPlaneError::Connect)?;
        let connecting = self
            .endpoint
            .connect_with(cfg, addr, "agentmesh")
            .map_err(|e| CallPlaneError::Connect(e.to_string()))?;
        let conn = tokio::time::timeout(CALL_CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| CallPlaneError::Connect(format!("handshake with {addr} timed out")))?
            .map_err(|e| CallPlaneError::Connect(format!("{addr}: {e}")))?;
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut conns = lock(&self.conns);
        if conns.len() >= CALL_CONNECTIONS_MAX && !conns.contains_key(&node) {
            let oldest = conns.iter().min_by_key(|(_, c)| c.seq).map(|(n, _)| *n);
            if let Some(c) = oldest.and_then(|n| conns.remove(&n)) {
                c.conn.close(0u32.into(), b"connection limit");
            }
        }
        let cached = Cached {
            seq,
            addr,
            conn: conn.clone(),
        };
        if let Some(old) = conns.insert(node, cached) {
            old.conn.close(0u32.into(), b"replaced");
        }
        Ok(conn)
    }

    /// Closes the connection to `node` (revoked, disconnected or left).
    pub fn close(&self, node: &NodeId) {
        if let Some(c) = lock(&self.conns).remove(node) {
            c.conn.close(0u32.into(), b"closed");
        }
    }

    /// Accepts inbound connections and hands each call stream, with the node id its
    /// handshake proved, to `serve`. Runs until the endpoint closes.
    pub async fn accept_loop<F, Fut>(self: Arc<Self>, serve: F)
    where
        F: Fn(NodeId, Arc<str>, CallStream) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(tokio::sync::Semaphore::new(INBOUND_CONNECTIONS_MAX));
        while let Some(incoming) = self.endpoint.accept().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!("too many inbound call connections; refusing one");
                incoming.refuse();
                continue;
            };
            let serve = serve.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let conn = match tokio::time::timeout(CALL_CONNECT_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "inbound call connection failed");
                        return;
                    }
                    Err(_) => return,
                };
                let Some(from) = proven_peer(&conn) else {
                    conn.close(1u32.into(), b"no peer identity");
                    return;
                };
                // The peer's id text, once per connection: printing an id base58-encodes it
                // (~2 µs), and the callee needs it on every call (agent header, audit).
                let from_text: Arc<str> = from.to_string().into();
                while let Ok(stream) = conn.accept_bi().await {
                    tokio::spawn(serve(from, from_text.clone(), stream));
                }
            });
        }
    }

    /// Closes every connection and stops accepting.
    pub fn shutdown(&self) {
        self.endpoint.close(0u32.into(), b"node stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(n: u8) -> Keypair {
        Keypair::from_secret([n; 32])
    }

    #[test]
    fn the_advertised_port_is_found_and_junk_is_ignored() {
        let addrs = vec![
            "/ip4/127.0.0.1/udp/4001/quic-v1".to_string(),
            format!("{CALL_ADDR_PREFIX}not-a-port"),
            format!("{CALL_ADDR_PREFIX}4002"),
        ];
        assert_eq!(advertised_port(&addrs), Some(4002));
        assert_eq!(advertised_port(&addrs[..2]), None);
    }

    #[tokio::test]
    async fn the_handshake_proves_the_callers_id_and_a_wrong_peer_is_refused() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (ka, kb, kc) = (key(1), key(2), key(3));
        let a = Arc::new(CallEndpoint::bind(&ka, lo, 0).unwrap());
        let b = Arc::new(CallEndpoint::bind(&kb, lo, 0).unwrap());
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(b.clone().accept_loop(move |from, _text, (mut w, mut r)| {
            let seen = seen_tx.clone();
            async move {
                let buf = r.read_to_end(1024).await.unwrap_or_default();
                let _ = w.write_all(&buf).await;
                let _ = w.finish();
                let _ = seen.send(from).await;
            }
        }));
        // B's port, expecting B's id: the stream works and B sees A's id.
        let (mut w, mut r) = a.open(kb.node_id(), lo, b.port()).await.unwrap();
        w.write_all(b"ping").await.unwrap();
        w.finish().unwrap();
        let echo = r.read_to_end(1024).await.unwrap();
        assert_eq!(echo, b"ping");
        let from = tokio::time::timeout(Duration::from_secs(5), seen_rx.recv()).await;
        assert_eq!(from.unwrap(), Some(ka.node_id()));
        // B's port while expecting C: the certificate does not match and nothing is opened.
        let wrong = a.open(kc.node_id(), lo, b.port()).await;
        assert!(
            matches!(wrong, Err(CallPlaneError::Connect(_))),
            "{wrong:?}"
        );
    }

    #[tokio::test]
    async fn a_peer_on_a_new_port_gets_a_fresh_connection() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let (ka, kb) = (key(4), key(5));
        let a = CallEndpoint::bind(&ka, lo, 0).unwrap();
        let serve = |_from: NodeId, _text: Arc<str>, (mut w, _r): CallStream| async move {
            let _ = w.write_all(b"up").await;
            let _ = w.finish();
        };
        let b1 = Arc::new(CallEndpoint::bind(&kb, lo, 0).unwrap());
        tokio::spawn(b1.clone().accept_loop(serve));
        // A QUIC stream reaches the peer with its first frame: finish (FIN) opens it.
        let (mut w, mut r) = a.open(kb.node_id(), lo, b1.port()).await.unwrap();
        w.finish().unwrap();
        let got = r.read_to_end(1024).await.unwrap();
        // B "restarts" on another port: the old connection is not reused.
        b1.shutdown();
        let b2 = Arc::new(CallEndpoint::bind(&kb, lo, 0).unwrap());
        tokio::spawn(b2.clone().accept_loop(serve));
        let (mut w, mut r) = a.open(kb.node_id(), lo, b2.port()).await.unwrap();
        w.finish().unwrap();
        let got2 = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(1024))
            .await
            .expect("the fresh connection answers")
            .unwrap();
        assert_eq!((got, got2), (b"up".to_vec(), b"up".to_vec()));
    }
}
