//! Call streams opened ahead of need. Opening a stream goes through the swarm task and the
//! peer's accept loop (measured ~170 µs on loopback, a third of a routed call), so after each
//! call to a peer the node opens the next one in the background and parks it here. A parked
//! stream is used only while it is young: the callee gives up on a stream that sends no
//! header within its header timeout, so [`POOLED_STREAM_IDLE_MAX`] stays well below that.

use libp2p::{PeerId, Stream};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Streams parked per peer.
pub const POOLED_STREAMS_PER_PEER: usize = 2;
/// Peers with parked streams (the least recently refilled are dropped beyond this).
pub const POOLED_PEERS_MAX: usize = 256;
/// A parked stream older than this is dropped instead of used (callee header timeout: 5 s).
pub const POOLED_STREAM_IDLE_MAX: Duration = Duration::from_secs(2);

/// Parked outbound call streams, per peer. Bounded by the constants above.
#[derive(Default)]
pub struct StreamPool {
    idle: Mutex<HashMap<PeerId, VecDeque<(Instant, Stream)>>>,
    refilling: Mutex<HashSet<PeerId>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StreamPool {
    /// A young parked stream to `peer`, if any (stale ones are dropped on the way).
    pub fn take(&self, peer: &PeerId) -> Option<Stream> {
        let mut idle = lock(&self.idle);
        let q = idle.get_mut(peer)?;
        while let Some((at, s)) = q.pop_back() {
            if at.elapsed() < POOLED_STREAM_IDLE_MAX {
                return Some(s);
            }
        }
        idle.remove(peer);
        None
    }

    /// Drops every parked stream to `peer` (after a failure on one of them).
    pub fn forget(&self, peer: &PeerId) {
        lock(&self.idle).remove(peer);
    }

    /// Tops `peer`'s parked streams up to [`POOLED_STREAMS_PER_PEER`] in the background.
    pub fn refill(self: &Arc<Self>, control: &libp2p_stream::Control, peer: PeerId) {
        if !lock(&self.refilling).insert(peer) {
            return;
        }
        let (pool, mut control) = (self.clone(), control.clone());
        tokio::spawn(async move {
            while pool.parked(&peer) < POOLED_STREAMS_PER_PEER {
                let opened = tokio::time::timeout(
                    crate::caller::STREAM_OPEN_TIMEOUT,
                    control.open_stream(peer, crate::transport::CALL_PROTOCOL),
                )
                .await;
                match opened {
                    Ok(Ok(s)) => pool.park(peer, s),
                    _ => break,
                }
            }
            lock(&pool.refilling).remove(&peer);
        });
    }

    fn parked(&self, peer: &PeerId) -> usize {
        lock(&self.idle).get(peer).map_or(0, |q| {
            q.iter()
                .filter(|(at, _)| at.elapsed() < POOLED_STREAM_IDLE_MAX)
                .count()
        })
    }

    fn park(&self, peer: PeerId, s: Stream) {
        let mut idle = lock(&self.idle);
        if !idle.contains_key(&peer) && idle.len() >= POOLED_PEERS_MAX {
            let oldest = idle
                .iter()
                .min_by_key(|(_, q)| q.back().map(|(at, _)| *at))
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                idle.remove(&p);
            }
        }
        let q = idle.entry(peer).or_default();
        q.retain(|(at, _)| at.elapsed() < POOLED_STREAM_IDLE_MAX);
        q.push_back((Instant::now(), s));
        while q.len() > POOLED_STREAMS_PER_PEER {
            q.pop_front();
        }
    }
}
