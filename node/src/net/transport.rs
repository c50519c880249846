//! The one libp2p `Swarm`: QUIC (quic-v1 over tokio, TLS 1.3 from the node key), identify,
//! optional mDNS, and `libp2p-stream` for admission, gossip and audit queries; plus the call
//! plane's quinn endpoint ([`crate::net::call_endpoint`]), which shares the node's TLS identity.
//!
//! The swarm runs in its own task. Everything else talks to it through [`SwarmCmd`]s and a
//! cloned [`libp2p_stream::Control`]; it reports connections as [`TransportEvent`]s. This
//! module decides *how* bytes move, never *what* is sent.

use agentmesh_crypto::{Keypair, NodeId};
use futures::StreamExt;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{identify, mdns, Multiaddr, PeerId, StreamProtocol, Swarm};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The gossip protocol name.
pub const GOSSIP_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/gossip/1");
/// The admission protocol.
pub const ADMIT_PROTOCOL: StreamProtocol = StreamProtocol::new(ADMIT_PROTOCOL_NAME);
/// The admission protocol's name (the fuzz targets and logs use the text).
pub const ADMIT_PROTOCOL_NAME: &str = "/agentmesh/admit/1";
/// The mesh-wide audit query protocol.
pub const AUDIT_PROTOCOL: StreamProtocol = StreamProtocol::new(AUDIT_PROTOCOL_NAME);
/// The audit query protocol's name.
pub const AUDIT_PROTOCOL_NAME: &str = "/agentmesh/audit/1";
/// The schema fetch protocol: a capability's JSON Schema by its hash, from its owner.
pub const SCHEMA_PROTOCOL: StreamProtocol = StreamProtocol::new("/agentmesh/schema/1");
/// Identify protocol version string.
pub const IDENTIFY_VERSION: &str = "/agentmesh/1.0.0";
/// Commands queued to the swarm task.
pub const SWARM_CMDS_MAX: usize = 1024;
/// Transport events queued to the runtime.
pub const TRANSPORT_EVENTS_MAX: usize = 1024;
/// Dials awaiting their outcome at once.
pub const PENDING_DIALS_MAX: usize = 256;
/// A connection with no open stream closes after this long.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);
/// How long start waits for the listeners to report their addresses.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most listen addresses kept and advertised.
pub const LISTEN_ADDRS_MAX: usize = 8;
/// Concurrent streams a peer may open on one connection.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

/// The composed behaviour (private: the event enum it derives is an implementation detail).
#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    stream: libp2p_stream::Behaviour,
}

/// A request to the swarm task.
#[derive(Debug)]
pub enum SwarmCmd {
    /// Dial an address whose peer id is unknown; reply with the id the TLS handshake proved.
    DialAddr {
        /// The address.
        addr: Multiaddr,
        /// The outcome.
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    /// Dial a known peer at these addresses unless already connected or dialing.
    DialPeer {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
    },
    /// Connect to a known peer (dialing these addresses unless already connected or dialing)
    /// and reply once connected or once the dial failed.
    Connect {
        /// The peer.
        peer: PeerId,
        /// Its addresses.
        addrs: Vec<Multiaddr>,
        /// The outcome.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Close every connection to a peer.
    Disconnect(PeerId),
    /// Stop the swarm.
    Shutdown,
}

/// What the swarm reports.
#[derive(Debug, Clone)]
pub enum TransportEvent {
    /// A connection to a peer is up (each one, so a reconnecting peer is admitted again).
    Connected(PeerId),
    /// The last connection to a peer closed.
    Disconnected(PeerId),
    /// mDNS saw a peer on the LAN.
    Discovered(PeerId, Vec<Multiaddr>),
}

/// Handles to the running swarm.
#[derive(Clone)]
pub struct Transport {
    /// Opens streams and accepts inbound ones.
    pub control: libp2p_stream::Control,
    /// Commands to the swarm task.
    pub cmds: mpsc::Sender<SwarmCmd>,
    /// Addresses we listen on.
    pub listen_addrs: Vec<Multiaddr>,
    /// Our peer id.
    pub local_peer: PeerId,
    /// The call plane (its own quinn endpoint, same TLS identity).
    pub calls: std::sync::Arc<crate::net::call_endpoint::CallEndpoint>,
    /// The IP each connected peer is reached on (the call plane dials it there).
    remote_ips: RemoteIps,
}

impl Transport {
    /// Dials `addr` and returns the proven peer id.
    pub async fn dial_addr(&self, addr: Multiaddr) -> Result<PeerId, String> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(SwarmCmd::DialAddr { addr, reply })
            .await
            .map_err(|_| "transport stopped".to_string())?;
        rx.await.map_err(|_| "transport stopped".to_string())?
    }

    /// Asks the swarm to connect to `peer` (no-op if connected or dialing).
    pub fn dial_peer(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let _ = self.cmds.try_send(SwarmCmd::DialPeer { peer, addrs });
    }

    /// Connects to `peer` (at once if already connected) or says why not.
    pub async fn connect(&self, peer: PeerId, addrs: Vec<Multiaddr>) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(SwarmCmd::Connect { peer, addrs, reply })
            .await
            .map_err(|_| "transport stopped".to_string())?;
        rx.await.map_err(|_| "transport stopped".to_string())?
    }

    /// Asks the swarm to drop every connection to `peer`.
    pub fn disconnect(&self, peer: PeerId) {
        if let Ok(node) = node_of(&peer) {
            self.calls.close(&node);
        }
        let _ = self.cmds.try_send(SwarmCmd::Disconnect(peer));
    }

    /// The IP a connected peer is reached on, if connected.
    pub fn remote_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        lock_ips(&self.remote_ips).get(peer).copied()
    }
}

fn lock_ips(
    m: &std::sync::Mutex<HashMap<PeerId, std::net::IpAddr>>,
) -> std::sync::MutexGuard<'_, HashMap<PeerId, std::net::IpAddr>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The IP in a multiaddr, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<std::net::IpAddr> {
    addr.iter().find_map(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Parses multiaddr strings, skipping (and logging) invalid ones.
pub fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs
        .iter()
        // The call-plane advertisement is not a libp2p address.
        .filter(|a| !a.starts_with(crate::net::call_endpoint::CALL_ADDR_PREFIX))
        .filter_map(|a| match a.parse::<Multiaddr>() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::debug!(addr = %a, error = %e, "skipping invalid multiaddr");
                None
            }
        })
        .collect()
}

/// Builds the swarm, starts listening, waits for the listen addresses, and spawns the swarm
/// task. Returns the handles and the event receiver.
pub async fn start(
    key: &Keypair,
    listen: &[String],
    call_port: u16,
    use_mdns: bool,
) -> anyhow::Result<(Transport, mpsc::Receiver<TransportEvent>)> {
    let kp = key.to_libp2p();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(kp)
        .with_tokio()
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = STREAMS_PER_CONNECTION_MAX;
            c
        })
        .with_behaviour(|key| {
            let local = key.public().to_peer_id();
            let mdns = if use_mdns {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), local) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS unavailable; continuing without it");
                        None
                    }
                }
            } else {
                None
            };
            Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_VERSION.to_string(),
                    key.public(),
                )),
                mdns: Toggle::from(mdns),
                stream: libp2p_stream::Behaviour::new(),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    let listen = if listen.is_empty() {
        vec!["/ip4/127.0.0.1/udp/0/quic-v1".to_string()]
    } else {
        listen.to_vec()
    };
    let mut want = 0usize;
    for a in &listen {
        let m: Multiaddr = a
            .parse()
            .map_err(|e| anyhow::anyhow!("listen address {a:?} is not a multiaddr: {e}"))?;
        swarm
            .listen_on(m)
            .map_err(|e| anyhow::anyhow!("cannot listen on {a}: {e}"))?;
        want += 1;
    }
    let mut listen_addrs = Vec::new();
    let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
    while listen_addrs.len() < want.min(LISTEN_ADDRS_MAX) {
        let ev = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| anyhow::anyhow!("listeners did not report addresses in time"))?;
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
            SwarmEvent::ListenerError { error, .. } => {
                anyhow::bail!("listener failed: {error}")
            }
            SwarmEvent::ListenerClosed { reason, .. } => {
                anyhow::bail!("listener closed: {reason:?}")
            }
            _ => {}
        }
    }
    // The call plane binds the IP of the first libp2p listen address (0.0.0.0 included).
    let call_ip = listen
        .iter()
        .filter_map(|a| a.parse::<Multiaddr>().ok())
        .find_map(|m| ip_of(&m))
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let calls = std::sync::Arc::new(crate::net::call_endpoint::CallEndpoint::bind(
        key, call_ip, call_port,
    )?);
    let control = swarm.behaviour().stream.new_control();
    let (cmd_tx, cmd_rx) = mpsc::channel(SWARM_CMDS_MAX);
    let (ev_tx, ev_rx) = mpsc::channel(TRANSPORT_EVENTS_MAX);
    let local_peer = *swarm.local_peer_id();
    let remote_ips = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    tokio::spawn(run_swarm(swarm, cmd_rx, ev_tx, remote_ips.clone()));
    Ok((
        Transport {
            control,
            cmds: cmd_tx,
            listen_addrs,
            local_peer,
            calls,
            remote_ips,
        },
        ev_rx,
    ))
}

async fn run_swarm(
    mut swarm: Swarm<Behaviour>,
    mut cmds: mpsc::Receiver<SwarmCmd>,
    events: mpsc::Sender<TransportEvent>,
    remote_ips: RemoteIps,
) {
    let mut pending: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, String>>> =
        HashMap::new();
    let mut waiting: Waiters = HashMap::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None | Some(SwarmCmd::Shutdown) => break,
                Some(SwarmCmd::DialAddr { addr, reply }) => {
                    if pending.len() >= PENDING_DIALS_MAX {
                        let _ = reply.send(Err("too many dials in progress".into()));
                        continue;
                    }
                    let opts = DialOpts::unknown_peer_id().address(addr).build();
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => { pending.insert(id, reply); }
                        Err(e) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
                Some(SwarmCmd::DialPeer { peer, addrs }) => {
                    if swarm.is_connected(&peer) || addrs.is_empty() {
                        continue;
                    }
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "dial not started");
                    }
                }
                Some(SwarmCmd::Connect { peer, addrs, reply }) => {
                    if swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(()));
                        continue;
                    }
                    if waiting.len() >= PENDING_DIALS_MAX && !waiting.contains_key(&peer) {
                        let _ = reply.send(Err("too many dials in progress".into()));
                        continue;
                    }
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    match swarm.dial(opts) {
                        // Already dialing: wait for that dial's outcome.
                        Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {
                            waiting.entry(peer).or_default().push(reply);
                        }
                        Err(e) => { let _ = reply.send(Err(e.to_string())); }
                    }
                }
                Some(SwarmCmd::Disconnect(peer)) => { let _ = swarm.disconnect_peer_id(peer); }
            },
            ev = swarm.select_next_some() => {
                handle_event(&mut swarm, ev, &mut pending, &mut waiting, &events, &remote_ips).await
            }
        }
    }
    tracing::debug!("swarm task stopped");
}

/// The IP each connected peer is reached on.
type RemoteIps = std::sync::Arc<std::sync::Mutex<HashMap<PeerId, std::net::IpAddr>>>;

/// Callers waiting for a connection to a known peer.
type Waiters = HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>;

async fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    ev: SwarmEvent<BehaviourEvent>,
    pending: &mut HashMap<ConnectionId, oneshot::Sender<Result<PeerId, String>>>,
    waiting: &mut Waiters,
    events: &mpsc::Sender<TransportEvent>,
    remote_ips: &RemoteIps,
) {
    match ev {
        SwarmEvent::ConnectionEstablished {
            peer_id,
            connection_id,
            endpoint,
            ..
        } => {
            // Bounded by the connections the swarm holds; the entry goes with the last one.
            if let Some(ip) = ip_of(endpoint.get_remote_address()) {
                lock_ips(remote_ips).insert(peer_id, ip);
            }
            if let Some(reply) = pending.remove(&connection_id) {
                let _ = reply.send(Ok(peer_id));
            }
            for w in waiting.remove(&peer_id).unwrap_or_default() {
                let _ = w.send(Ok(()));
            }
            // Every connection, not only the first: a peer restarted with the same key
            // reconnects while our old connection to it still looks open (until QUIC's idle
            // timeout), and it waits for our certificate on the new one.
            let _ = events.send(TransportEvent::Connected(peer_id)).await;
        }
        SwarmEvent::ConnectionClosed {
            peer_id,
            num_established,
            cause,
            ..
        } => {
            tracing::debug!(%peer_id, ?cause, "connection closed");
            if num_established == 0 {
                lock_ips(remote_ips).remove(&peer_id);
                let _ = events.send(TransportEvent::Disconnected(peer_id)).await;
            }
        }
        SwarmEvent::OutgoingConnectionError {
            connection_id,
            peer_id,
            error,
        } => {
            tracing::debug!(?peer_id, %error, "dial failed");
            if let Some(reply) = pending.remove(&connection_id) {
                let _ = reply.send(Err(error.to_string()));
            }
            if let Some(p) = peer_id {
                if !swarm.is_connected(&p) {
                    for w in waiting.remove(&p).unwrap_or_default() {
                        let _ = w.send(Err(error.to_string()));
                    }
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
            for (peer, addr) in list {
                by_peer.entry(peer).or_default().push(addr);
            }
            for (peer, addrs) in by_peer {
                if peer != *swarm.local_peer_id() && !swarm.is_connected(&peer) {
                    let _ = events.try_send(TransportEvent::Discovered(peer, addrs));
                }
            }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
            peer_id,
            info,
            ..
        })) => {
            tracing::trace!(%peer_id, agent = %info.agent_version, "identified");
        }
        _ => {}
    }
}

/// Most node id ↔ peer id conversions remembered (the table is cleared when full).
pub const ID_CACHE_MAX: usize = 8192;

/// Memoised node id ↔ peer id conversions. Each conversion checks the key is a curve point
/// (a point decompression, ~20 µs), and the call path converts on every call at both ends.
/// (Printing a node id needs no cache: `NodeId`'s `Display` works on the bytes alone.)
#[derive(Default)]
struct IdCache {
    to_peer: HashMap<NodeId, PeerId>,
    to_node: HashMap<PeerId, NodeId>,
}

fn id_cache() -> std::sync::MutexGuard<'static, IdCache> {
    static CACHE: std::sync::OnceLock<std::sync::Mutex<IdCache>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// `node.to_peer_id()`, memoised.
pub fn peer_of(node: &NodeId) -> Result<PeerId, agentmesh_crypto::CryptoError> {
    if let Some(p) = id_cache().to_peer.get(node) {
        return Ok(*p);
    }
    let p = node.to_peer_id()?;
    remember(*node, p);
    Ok(p)
}

/// `NodeId::from_peer_id(peer)`, memoised.
pub fn node_of(peer: &PeerId) -> Result<NodeId, agentmesh_crypto::CryptoError> {
    if let Some(n) = id_cache().to_node.get(peer) {
        return Ok(*n);
    }
    let n = NodeId::from_peer_id(peer)?;
    remember(n, *peer);
    Ok(n)
}

fn remember(node: NodeId, peer: PeerId) {
    let mut c = id_cache();
    if c.to_peer.len() >= ID_CACHE_MAX {
        c.to_peer.clear();
        c.to_node.clear();
    }
    c.to_peer.insert(node, peer);
    c.to_node.insert(peer, node);
}
