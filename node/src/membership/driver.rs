//! The gossip driver: a thin task around the sans-IO [`Gossip`] state machine.
//!
//! It feeds in received frames (length-prefixed, size-checked before reading), timer expiries
//! and commands, and carries `Output::Send` to peers over `/agentmesh/gossip/1`, one long-lived
//! outbound stream per peer with a bounded queue. It makes no protocol decisions: whom to
//! probe, what to gossip and when are all the state machine's.

use crate::net::frame::{read_frame, write_frame};
use crate::net::transport::{parse_addrs, Transport, GOSSIP_PROTOCOL};
use crate::security::admission::{AdmissionTable, ADMIT_TIMEOUT};
use agentmesh_crypto::Keypair;
use agentmesh_crypto::NodeId;
use agentmesh_gossip::{
    Config, Event, Gossip, Input, MemberView, NodeRecord, Output, RecordUpdate,
};
use futures::{AsyncWriteExt, StreamExt};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Commands queued to the driver.
pub const DRIVER_CMDS_MAX: usize = 256;
/// Received frames queued for the state machine (readers wait when it is full).
pub const INBOUND_FRAMES_MAX: usize = 1024;
/// Frames queued per peer; a full queue drops (and counts) new frames.
pub const PEER_QUEUE_FRAMES_MAX: usize = 256;
/// Peers with an outbound sender at once.
pub const PEER_SENDERS_MAX: usize = 4096;
/// Inbound gossip streams read at once.
pub const INBOUND_STREAMS_MAX: usize = 4096;
/// An outbound sender with nothing to send for this long stops.
pub const SENDER_IDLE: Duration = Duration::from_secs(60);
/// Time to connect, be admitted and open a stream to a peer.
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed open, frames to that peer are dropped for this long.
pub const OPEN_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long a graceful leave waits for its frames to be written.
pub const LEAVE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Milliseconds since the UNIX epoch: the clock the state machine runs on.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A command for the driver.
#[derive(Debug)]
pub enum DriverCmd {
    /// Join through these (admitted) seeds.
    Join(Vec<NodeId>),
    /// Leave gracefully; the reply fires once the leave frames were written (or timed out).
    Leave(oneshot::Sender<()>),
    /// Change the local record.
    Update(RecordUpdate),
    /// Apply and spread a root-signed revocation.
    Revoke(Arc<agentmesh_crypto::SignedRevocation>),
    /// Stop the driver.
    Stop,
}

/// Driver counters.
#[derive(Debug, Default)]
pub struct DriverStats {
    /// Frames received and fed in.
    pub frames_in: AtomicU64,
    /// Frames written to peers.
    pub frames_out: AtomicU64,
    /// Frames dropped because a peer queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Frames dropped because the peer could not be reached.
    pub dropped_unreachable: AtomicU64,
    /// Frames dropped because the sender was not (or no longer) admitted.
    pub dropped_unadmitted: AtomicU64,
    /// Frames queued and not yet written or dropped.
    unsent: AtomicUsize,
    /// The state machine's own counters (messages, bytes, suspicions), copied after each input.
    pub gossip: Mutex<agentmesh_gossip::Stats>,
}

/// A read-only copy of the membership, published by the driver after every change. The state
/// machine itself never leaves the driver's thread.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every member, self first.
    pub members: Vec<MemberView>,
    /// Nodes revoked by the mesh root (as heard so far).
    pub revoked: Vec<NodeId>,
    /// The verified root-signed revocations behind `revoked`.
    pub revocations: Vec<Arc<agentmesh_crypto::SignedRevocation>>,
}

/// The latest snapshot, shared with readers.
pub type SharedSnapshot = Arc<Mutex<Arc<Snapshot>>>;

/// Reads the latest snapshot.
pub fn snapshot(s: &SharedSnapshot) -> Arc<Snapshot> {
    s.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What the driver needs to build the state machine on its own thread.
#[derive(Debug, Clone)]
pub struct GossipInit {
    /// Gossip configuration.
    pub config: Config,
    /// The node key.
    pub key: Keypair,
    /// Advertised addresses.
    pub addrs: Vec<String>,
    /// Local record template.
    pub record: NodeRecord,
    /// RNG seed.
    pub rng_seed: u64,
}

struct Driver {
    gossip: Gossip,
    snapshot: SharedSnapshot,
    transport: Transport,
    admission: Arc<AdmissionTable>,
    stats: Arc<DriverStats>,
    senders: HashMap<NodeId, mpsc::Sender<Vec<u8>>>,
    frame_bytes_max: usize,
    rt: tokio::runtime::Handle,
    changed: bool,
}

/// Starts the driver on its own thread (the state machine is not `Send`) and its inbound
/// acceptor on the caller's runtime. Returns the command sender and the snapshot.
pub async fn spawn(
    init: GossipInit,
    transport: Transport,
    admission: Arc<AdmissionTable>,
    stats: Arc<DriverStats>,
) -> anyhow::Result<(mpsc::Sender<DriverCmd>, SharedSnapshot)> {
    let frame_bytes_max = init.config.frame_bytes_max;
    let (cmd_tx, cmd_rx) = mpsc::channel(DRIVER_CMDS_MAX);
    let (in_tx, in_rx) = mpsc::channel(INBOUND_FRAMES_MAX);
    let incoming = transport
        .control
        .clone()
        .accept(GOSSIP_PROTOCOL)
        .map_err(|e| anyhow::anyhow!("gossip protocol: {e}"))?;
    let snapshot: SharedSnapshot = Arc::new(Mutex::new(Arc::new(Snapshot::default())));
    let rt = tokio::runtime::Handle::current();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let snap = snapshot.clone();
    let t = transport.clone();
    let adm = admission.clone();
    let st = stats.clone();
    std::thread::Builder::new()
        .name("gossip-driver".into())
        .spawn(move || {
            let local = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let gossip = match Gossip::new(
                init.config,
                init.key,
                init.addrs,
                init.record,
                init.rng_seed,
                now_ms(),
            ) {
                Ok(g) => g,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            let mut driver = Driver {
                gossip,
                snapshot: snap,
                transport: t,
                admission: adm,
                stats: st,
                senders: HashMap::new(),
                frame_bytes_max,
                rt,
                changed: true,
            };
            driver.publish();
            let _ = ready_tx.send(Ok(()));
            local.block_on(driver.run(cmd_rx, in_rx));
        })?;
    ready_rx
        .await
        .map_err(|_| anyhow::anyhow!("gossip driver failed to start"))?
        .map_err(|e| anyhow::anyhow!("gossip: {e}"))?;
    tokio::spawn(accept_inbound(
        incoming,
        in_tx,
        admission,
        stats,
        frame_bytes_max,
    ));
    Ok((cmd_tx, snapshot))
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<DriverCmd>,
        mut inbound: mpsc::Receiver<(NodeId, Vec<u8>)>,
    ) {
        loop {
            let next = self.gossip.next_timeout();
            let wait = Duration::from_millis(next.saturating_sub(now_ms()));
            tokio::select! {
                _ = tokio::time::sleep(wait) => self.handle(Input::Tick),
                frame = inbound.recv() => match frame {
                    Some((from, bytes)) => self.handle(Input::Frame { from, bytes }),
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    None | Some(DriverCmd::Stop) => break,
                    Some(DriverCmd::Join(seeds)) => self.handle(Input::Join { seeds }),
                    Some(DriverCmd::Revoke(r)) => {
                        self.changed = true;
                        self.handle(Input::Revoke(r));
                    }
                    Some(DriverCmd::Update(u)) => {
                        self.changed = true;
                        self.handle(Input::Update(u));
                    }
                    Some(DriverCmd::Leave(reply)) => {
                        self.handle(Input::Leave);
                        self.flush(reply);
                    }
                },
            }
            self.publish();
        }
        tracing::debug!("gossip driver stopped");
    }

    fn publish(&mut self) {
        if !self.changed {
            return;
        }
        self.changed = false;
        let snap = Arc::new(Snapshot {
            members: self.gossip.members(),
            revoked: self.gossip.revoked_ids(),
            revocations: self.gossip.revocations(),
        });
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snap;
    }

    fn handle(&mut self, input: Input) {
        self.gossip.handle(input, now_ms());
        while let Some(o) = self.gossip.poll_output() {
            match o {
                Output::Send { to, addrs, bytes } => self.send(to, addrs, bytes),
                Output::Event(ev) => {
                    self.changed = true;
                    log_event(&ev);
                }
            }
        }
        *self.stats.gossip.lock().unwrap_or_else(|p| p.into_inner()) = self.gossip.stats().clone();
    }

    fn flush(&self, reply: oneshot::Sender<()>) {
        let stats = self.stats.clone();
        self.rt.spawn(async move {
            let deadline = tokio::time::Instant::now() + LEAVE_FLUSH_TIMEOUT;
            while stats.unsent.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = reply.send(());
        });
    }

    fn send(&mut self, to: NodeId, addrs: Vec<String>, bytes: Vec<u8>) {
        if bytes.len() > self.frame_bytes_max {
            tracing::warn!(peer = %to, len = bytes.len(), "gossip produced an oversize frame; dropped");
            return;
        }
        if self.senders.len() >= PEER_SENDERS_MAX {
            self.senders.retain(|_, s| !s.is_closed());
        }
        let mut frame = Some(bytes);
        for _ in 0..2 {
            let tx = match self.senders.get(&to) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    if self.senders.len() >= PEER_SENDERS_MAX {
                        break;
                    }
                    let tx = self.spawn_sender(to, &addrs);
                    self.senders.insert(to, tx.clone());
                    tx
                }
            };
            let Some(f) = frame.take() else { return };
            self.stats.unsent.fetch_add(1, Ordering::Relaxed);
            match tx.try_send(f) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.stats.unsent.fetch_sub(1, Ordering::Relaxed);
                    self.stats
                        .dropped_queue_full
                        .fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(f)) => {
                    self.stats.unsent.fetch_sub(1, Ordering::Relaxed);
                    self.senders.remove(&to);
                    frame = Some(f);
                }
            }
        }
        self.stats
            .dropped_queue_full
            .fetch_add(1, Ordering::Relaxed);
    }

    fn spawn_sender(&self, to: NodeId, addrs: &[String]) -> mpsc::Sender<Vec<u8>> {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES_MAX);
        let sender = PeerSender {
            peer: to,
            addrs: parse_addrs(addrs),
            transport: self.transport.clone(),
            admission: self.admission.clone(),
            stats: self.stats.clone(),
            frame_bytes_max: self.frame_bytes_max,
        };
        self.rt.spawn(sender.run(rx));
        tx
    }
}

fn log_event(ev: &Event) {
    match ev {
        Event::Joined(id) => tracing::info!(peer = %id, "member joined"),
        Event::Updated(id) => tracing::debug!(peer = %id, "member record updated"),
        Event::Suspect(id) => tracing::info!(peer = %id, "member suspected"),
        Event::Alive(id) => tracing::info!(peer = %id, "member refuted suspicion"),
        Event::Dead(id) => tracing::warn!(peer = %id, "member declared dead"),
        Event::Left(id) => tracing::info!(peer = %id, "member left"),
        Event::Revoked(id) => tracing::warn!(peer = %id, "member revoked by the mesh root"),
        Event::Penalized { peer, reason } => {
            tracing::warn!(%peer, %reason, "peer penalized")
        }
    }
}

/// One peer's outbound stream and queue.
struct PeerSender {
    peer: NodeId,
    addrs: Vec<libp2p::Multiaddr>,
    transport: Transport,
    admission: Arc<AdmissionTable>,
    stats: Arc<DriverStats>,
    frame_bytes_max: usize,
}

impl PeerSender {
    async fn run(self, mut rx: mpsc::Receiver<Vec<u8>>) {
        let mut stream: Option<libp2p::Stream> = None;
        let mut retry_at = tokio::time::Instant::now();
        loop {
            let frame = match tokio::time::timeout(SENDER_IDLE, rx.recv()).await {
                Ok(Some(f)) => f,
                _ => break,
            };
            if stream.is_none() && tokio::time::Instant::now() >= retry_at {
                match self.open().await {
                    Ok(s) => stream = Some(s),
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, error = %e, "gossip stream not opened");
                        retry_at = tokio::time::Instant::now() + OPEN_RETRY_BACKOFF;
                    }
                }
            }
            match stream.as_mut() {
                Some(s) => {
                    let res = async {
                        write_frame(s, &frame, self.frame_bytes_max).await?;
                        s.flush().await?;
                        Ok::<_, crate::net::frame::FrameError>(())
                    }
                    .await;
                    match res {
                        Ok(()) => {
                            self.stats.frames_out.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::debug!(peer = %self.peer, error = %e, "gossip stream broke");
                            self.stats
                                .dropped_unreachable
                                .fetch_add(1, Ordering::Relaxed);
                            stream = None;
                        }
                    }
                }
                None => {
                    self.stats
                        .dropped_unreachable
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            self.stats.unsent.fetch_sub(1, Ordering::Relaxed);
        }
        // Frames left in the queue are dropped with the receiver; settle the count.
        rx.close();
        while rx.try_recv().is_ok() {
            self.stats.unsent.fetch_sub(1, Ordering::Relaxed);
            self.stats
                .dropped_unreachable
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    async fn open(&self) -> Result<libp2p::Stream, String> {
        let peer = crate::net::transport::peer_of(&self.peer).map_err(|e| e.to_string())?;
        let fut = async {
            self.transport.connect(peer, self.addrs.clone()).await?;
            self.admission
                .wait_mutual(&self.peer, OPEN_STREAM_TIMEOUT)
                .await?;
            let mut control = self.transport.control.clone();
            control
                .open_stream(peer, GOSSIP_PROTOCOL)
                .await
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(OPEN_STREAM_TIMEOUT, fut)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

async fn accept_inbound(
    mut incoming: libp2p_stream::IncomingStreams,
    frames: mpsc::Sender<(NodeId, Vec<u8>)>,
    admission: Arc<AdmissionTable>,
    stats: Arc<DriverStats>,
    frame_bytes_max: usize,
) {
    let slots = Arc::new(Semaphore::new(INBOUND_STREAMS_MAX));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(from) = crate::net::transport::node_of(&peer) else {
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many inbound gossip streams; dropping one");
            continue;
        };
        let reader = InboundReader {
            from,
            frames: frames.clone(),
            admission: admission.clone(),
            stats: stats.clone(),
            frame_bytes_max,
        };
        tokio::spawn(async move {
            reader.run(stream).await;
            drop(permit);
        });
    }
}

struct InboundReader {
    from: NodeId,
    frames: mpsc::Sender<(NodeId, Vec<u8>)>,
    admission: Arc<AdmissionTable>,
    stats: Arc<DriverStats>,
    frame_bytes_max: usize,
}

impl InboundReader {
    async fn run(self, mut stream: libp2p::Stream) {
        if let Err(reason) = self.admission.wait_theirs(&self.from, ADMIT_TIMEOUT).await {
            tracing::debug!(peer = %self.from, %reason, "gossip stream from unadmitted peer dropped");
            self.stats
                .dropped_unadmitted
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        loop {
            let bytes = match read_frame(&mut stream, self.frame_bytes_max).await {
                Ok(b) => b,
                Err(crate::net::frame::FrameError::Closed) => return,
                Err(e) => {
                    tracing::debug!(peer = %self.from, error = %e, "gossip stream ended");
                    return;
                }
            };
            if !self.admission.is_admitted(&self.from) {
                self.stats
                    .dropped_unadmitted
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            if self.frames.send((self.from, bytes)).await.is_err() {
                return;
            }
        }
    }
}
