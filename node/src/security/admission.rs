//! Admission at connect over `/agentmesh/admit/1`.
//!
//! When a connection to a peer is established, each side opens one admit stream to the other
//! and presents its certificate ([`AdmitHello`]). The receiver verifies it against the mesh
//! root, the mesh id, the TLS-proven peer id and the current time, and answers with an
//! [`AdmitVerdict`]. A rejected peer is told why before it is disconnected, so the joiner can
//! log `admission rejected by <peer>: <reason>` and show it in its status.
//!
//! Until a peer is admitted, its gossip frames are dropped and its calls refused.

use crate::net::frame::{read_frame, write_frame};
use agentmesh_crypto::{NodeId, SignedCert};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The admission protocol name.
pub const ADMIT_PROTOCOL: &str = crate::net::transport::ADMIT_PROTOCOL_NAME;
/// Largest admit frame (a certificate is a few hundred bytes).
pub const ADMIT_FRAME_BYTES_MAX: usize = 8 * 1024;
/// Longest rejection reason sent or kept.
pub const REASON_LEN_MAX: usize = 512;
/// Most peers whose admission state is tracked at once.
pub const ADMISSION_PEERS_MAX: usize = 8192;
/// How long one side of the exchange may take.
pub const ADMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who may connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdmissionMode {
    /// Anyone (demos only; the node warns loudly at start).
    Open,
    /// Peers must present a certificate for `mesh_id` signed by `root`.
    Enforced {
        /// Mesh root public key.
        root: NodeId,
        /// Mesh id certificates must name.
        mesh_id: String,
    },
}

/// What a peer presents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmitHello {
    /// Its certificate (None in open meshes).
    pub cert: Option<SignedCert>,
}

/// The answer to a hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdmitVerdict {
    /// Admitted.
    Accepted,
    /// Refused, with the reason; the connection closes right after.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Our view of one direction of a peer's admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerVerdict {
    /// Exchange not finished.
    Pending,
    /// Admitted; the roles come from its verified certificate.
    Admitted {
        /// Roles granted by the root.
        roles: Vec<String>,
    },
    /// Refused, with the reason.
    Rejected(String),
}

#[derive(Debug, Clone)]
struct PeerState {
    /// Did we admit them?
    theirs: PeerVerdict,
    /// Did they admit us?
    ours: PeerVerdict,
}

/// A rejection of this node by a peer, as shown in status and readiness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedBy {
    /// The peer that refused us.
    pub peer: String,
    /// Its reason.
    pub reason: String,
}

/// Admission state for status endpoints.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionReport {
    /// `open` or `enforced`.
    pub mode: String,
    /// Peers currently admitted by us.
    pub admitted_peers: usize,
    /// Peers we refused since start.
    pub rejected_total: u64,
    /// Peers that refused us since start.
    pub rejected_by_peers_total: u64,
    /// The last refusal of this node by a peer.
    pub last_rejected_by: Option<RejectedBy>,
}

impl std::fmt::Display for AdmissionReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.last_rejected_by {
            Some(r) => write!(
                f,
                "admission rejected by {}: {} ({} mode)",
                r.peer, r.reason, self.mode
            ),
            None => write!(
                f,
                "ok ({} mode, {} peers admitted, {} refused)",
                self.mode, self.admitted_peers, self.rejected_total
            ),
        }
    }
}

/// Per-peer admission state, shared by the transport, gossip driver and call paths.
#[derive(Debug)]
pub struct AdmissionTable {
    mode: AdmissionMode,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    changed: tokio::sync::watch::Sender<u64>,
    rejected_total: AtomicU64,
    rejected_by_total: AtomicU64,
    last_rejected_by: Mutex<Option<RejectedBy>>,
}

impl AdmissionTable {
    /// A table for `mode`.
    pub fn new(mode: AdmissionMode) -> Self {
        AdmissionTable {
            mode,
            peers: Mutex::new(HashMap::new()),
            changed: tokio::sync::watch::channel(0).0,
            rejected_total: AtomicU64::new(0),
            rejected_by_total: AtomicU64::new(0),
            last_rejected_by: Mutex::new(None),
        }
    }

    /// The mode in force.
    pub fn mode(&self) -> &AdmissionMode {
        &self.mode
    }

    fn update(&self, peer: NodeId, f: impl FnOnce(&mut PeerState)) {
        {
            let mut peers = lock(&self.peers);
            if !peers.contains_key(&peer) && peers.len() >= ADMISSION_PEERS_MAX {
                return;
            }
            let st = peers.entry(peer).or_insert(PeerState {
                theirs: PeerVerdict::Pending,
                ours: PeerVerdict::Pending,
            });
            f(st);
        }
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A connection to `peer` opened: track it (both directions pending unless the exchange
    /// already finished: the peer's hello can be judged before this event is processed). A
    /// reconnecting peer starts from nothing because [`Self::disconnected`] forgot it.
    pub fn connected(&self, peer: NodeId) {
        self.update(peer, |_| {});
    }

    /// True if both sides admitted `peer` on the current connection.
    pub fn is_mutual(&self, peer: &NodeId) -> bool {
        lock(&self.peers).get(peer).is_some_and(|s| {
            matches!(s.ours, PeerVerdict::Admitted { .. })
                && matches!(s.theirs, PeerVerdict::Admitted { .. })
        })
    }

    /// The last connection to `peer` closed: forget it (it must be admitted again).
    pub fn disconnected(&self, peer: &NodeId) {
        lock(&self.peers).remove(peer);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Records our verdict on `peer`.
    pub fn set_theirs(&self, peer: NodeId, v: PeerVerdict) {
        if matches!(v, PeerVerdict::Rejected(_)) {
            self.rejected_total.fetch_add(1, Ordering::Relaxed);
        }
        self.update(peer, |s| s.theirs = v);
    }

    /// Records `peer`'s verdict on us.
    pub fn set_ours(&self, peer: NodeId, v: PeerVerdict) {
        if let PeerVerdict::Rejected(reason) = &v {
            self.rejected_by_total.fetch_add(1, Ordering::Relaxed);
            *lock(&self.last_rejected_by) = Some(RejectedBy {
                peer: peer.to_string(),
                reason: reason.clone(),
            });
        }
        self.update(peer, |s| s.ours = v);
    }

    /// Records that the exchange with `peer` failed (transport error or timeout), without
    /// counting it as a refusal by the peer.
    pub fn fail_ours(&self, peer: NodeId, reason: String) {
        self.update(peer, |s| s.ours = PeerVerdict::Rejected(reason));
    }

    /// Roles of `peer` if we admitted it.
    pub fn admitted_roles(&self, peer: &NodeId) -> Option<Vec<String>> {
        match lock(&self.peers).get(peer).map(|s| &s.theirs) {
            Some(PeerVerdict::Admitted { roles }) => Some(roles.clone()),
            _ => None,
        }
    }

    /// True if we admitted `peer`.
    pub fn is_admitted(&self, peer: &NodeId) -> bool {
        self.admitted_roles(peer).is_some()
    }

    /// Waits until we have decided on `peer` (admitted: `Ok(roles)`), up to `timeout`.
    pub async fn wait_theirs(
        &self,
        peer: &NodeId,
        timeout: Duration,
    ) -> Result<Vec<String>, String> {
        self.wait(peer, timeout, |s| &s.theirs).await
    }

    /// The certificate roles of an inbound caller, waiting up to [`ADMIT_TIMEOUT`] for its
    /// admission; `forbidden` if it was refused or never admitted.
    pub async fn caller_roles(
        &self,
        caller: &NodeId,
    ) -> Result<Vec<String>, crate::contract::CallError> {
        self.wait_theirs(caller, ADMIT_TIMEOUT)
            .await
            .map_err(|reason| {
                crate::contract::CallError::new(
                    crate::contract::ErrorCode::Forbidden,
                    format!("caller not admitted: {reason}"),
                )
            })
    }

    /// Waits until both sides admitted each other, up to `timeout`.
    pub async fn wait_mutual(&self, peer: &NodeId, timeout: Duration) -> Result<(), String> {
        self.wait(peer, timeout, |s| &s.ours).await?;
        self.wait(peer, timeout, |s| &s.theirs).await?;
        Ok(())
    }

    async fn wait(
        &self,
        peer: &NodeId,
        timeout: Duration,
        side: fn(&PeerState) -> &PeerVerdict,
    ) -> Result<Vec<String>, String> {
        let mut rx = self.changed.subscribe();
        let fut = async {
            loop {
                let v = lock(&self.peers).get(peer).map(|s| side(s).clone());
                match v {
                    Some(PeerVerdict::Admitted { roles }) => return Ok(roles),
                    Some(PeerVerdict::Rejected(r)) => return Err(r),
                    _ => {}
                }
                if rx.changed().await.is_err() {
                    return Err("admission table closed".to_string());
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| Err("admission timed out".to_string()))
    }

    /// Peers we refused since start.
    pub fn rejected_total(&self) -> u64 {
        self.rejected_total.load(Ordering::Relaxed)
    }

    /// The status report.
    pub fn report(&self) -> AdmissionReport {
        let admitted_peers = lock(&self.peers)
            .values()
            .filter(|s| matches!(s.theirs, PeerVerdict::Admitted { .. }))
            .count();
        AdmissionReport {
            mode: match self.mode {
                AdmissionMode::Open => "open".into(),
                AdmissionMode::Enforced { .. } => "enforced".into(),
            },
            admitted_peers,
            rejected_total: self.rejected_total(),
            rejected_by_peers_total: self.rejected_by_total.load(Ordering::Relaxed),
            last_rejected_by: lock(&self.last_rejected_by).clone(),
        }
    }

    /// Decides on a hello from `presenter` at `now_unix_s`: the roles, or why not.
    pub fn verify(
        &self,
        hello: &AdmitHello,
        presenter: &NodeId,
        now_unix_s: u64,
    ) -> Result<Vec<String>, String> {
        match &self.mode {
            AdmissionMode::Open => Ok(Vec::new()),
            AdmissionMode::Enforced { root, mesh_id } => {
                let cert = hello
                    .cert
                    .as_ref()
                    .ok_or_else(|| "no admission certificate presented".to_string())?;
                cert.verify(root, mesh_id, presenter, now_unix_s)
                    .map(|c| c.roles)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why an exchange failed at the transport or encoding level.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    /// The stream failed.
    #[error(transparent)]
    Frame(#[from] crate::net::frame::FrameError),
    /// The peer sent bytes that do not decode.
    #[error("malformed admit frame: {0}")]
    Decode(String),
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AdmitError> {
    postcard::to_stdvec(v).map_err(|e| AdmitError::Decode(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, AdmitError> {
    postcard::from_bytes(b).map_err(|e| AdmitError::Decode(e.to_string()))
}

/// Decodes a peer's hello (the server side's first frame). Nothing is verified here; see
/// [`AdmissionTable::verify`].
pub fn decode_hello(bytes: &[u8]) -> Result<AdmitHello, AdmitError> {
    crate::net::frame::check_len(bytes.len(), ADMIT_FRAME_BYTES_MAX)?;
    decode(bytes)
}

/// Decodes the verdict a peer sent back.
pub fn decode_verdict(bytes: &[u8]) -> Result<AdmitVerdict, AdmitError> {
    crate::net::frame::check_len(bytes.len(), ADMIT_FRAME_BYTES_MAX)?;
    decode(bytes)
}

/// Client side on a fresh stream: present our hello and read the verdict.
pub async fn present<S>(stream: &mut S, hello: &AdmitHello) -> Result<AdmitVerdict, AdmitError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    use futures::AsyncWriteExt;
    write_frame(stream, &encode(hello)?, ADMIT_FRAME_BYTES_MAX).await?;
    stream
        .flush()
        .await
        .map_err(crate::net::frame::FrameError::from)?;
    let bytes = read_frame(stream, ADMIT_FRAME_BYTES_MAX).await?;
    let v = decode_verdict(&bytes)?;
    Ok(match v {
        AdmitVerdict::Rejected { reason } => AdmitVerdict::Rejected {
            reason: crate::net::call_proto::truncate(&reason, REASON_LEN_MAX),
        },
        ok => ok,
    })
}

/// Server side: read a hello and decide. Returns the verdict sent (after sending it).
pub async fn judge<S>(
    stream: &mut S,
    table: &AdmissionTable,
    presenter: &NodeId,
    now_unix_s: u64,
) -> Result<PeerVerdict, AdmitError>
where
    S: futures::AsyncRead + futures::AsyncWrite + Unpin,
{
    use futures::AsyncWriteExt;
    let bytes = read_frame(stream, ADMIT_FRAME_BYTES_MAX).await?;
    let decision = match decode_hello(&bytes) {
        Ok(hello) => table.verify(&hello, presenter, now_unix_s),
        Err(e) => Err(e.to_string()),
    };
    let (wire, verdict) = match decision {
        Ok(roles) => (AdmitVerdict::Accepted, PeerVerdict::Admitted { roles }),
        Err(reason) => {
            let reason = crate::net::call_proto::truncate(&reason, REASON_LEN_MAX);
            (
                AdmitVerdict::Rejected {
                    reason: reason.clone(),
                },
                PeerVerdict::Rejected(reason),
            )
        }
    };
    write_frame(stream, &encode(&wire)?, ADMIT_FRAME_BYTES_MAX).await?;
    stream
        .flush()
        .await
        .map_err(crate::net::frame::FrameError::from)?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::{AdmissionCert, Keypair};

    fn cert_for(root: &Keypair, node: &Keypair, mesh: &str, nb: u64, na: u64) -> SignedCert {
        AdmissionCert {
            mesh_id: mesh.into(),
            node_id: node.node_id(),
            roles: vec!["worker".into()],
            not_before: nb,
            not_after: na,
        }
        .sign(root)
        .unwrap()
    }

    #[test]
    fn verify_table() {
        let root = Keypair::from_secret([1; 32]);
        let other_root = Keypair::from_secret([2; 32]);
        let node = Keypair::from_secret([3; 32]);
        let t = AdmissionTable::new(AdmissionMode::Enforced {
            root: root.node_id(),
            mesh_id: "m".into(),
        });
        let me = node.node_id();
        let ok = AdmitHello {
            cert: Some(cert_for(&root, &node, "m", 0, 100)),
        };
        assert_eq!(t.verify(&ok, &me, 50), Ok(vec!["worker".to_string()]));
        let cases = [
            (AdmitHello { cert: None }, "no admission certificate"),
            (
                AdmitHello {
                    cert: Some(cert_for(&other_root, &node, "m", 0, 100)),
                },
                "expected root",
            ),
            (
                AdmitHello {
                    cert: Some(cert_for(&root, &node, "m", 0, 10)),
                },
                "expired",
            ),
            (
                AdmitHello {
                    cert: Some(cert_for(&root, &node, "other", 0, 100)),
                },
                "mesh",
            ),
        ];
        for (hello, want) in cases {
            let err = t.verify(&hello, &me, 50).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        // Presented by someone else than the subject.
        let thief = Keypair::from_secret([4; 32]).node_id();
        assert!(t.verify(&ok, &thief, 50).is_err());
        // Open mode admits anyone.
        let open = AdmissionTable::new(AdmissionMode::Open);
        assert!(open.verify(&AdmitHello { cert: None }, &me, 0).is_ok());
    }

    #[test]
    fn exchange_over_a_duplex() {
        let root = Keypair::from_secret([1; 32]);
        let node = Keypair::from_secret([3; 32]);
        let t = AdmissionTable::new(AdmissionMode::Enforced {
            root: root.node_id(),
            mesh_id: "m".into(),
        });
        // Encode a hello, judge it from a buffer, and check the verdict bytes written back.
        let hello = AdmitHello {
            cert: Some(cert_for(&root, &node, "m", 0, 10)),
        };
        let mut input = crate::net::frame::encode_frame(&postcard::to_stdvec(&hello).unwrap());
        let mut s = futures::io::Cursor::new(std::mem::take(&mut input));
        let v = futures::executor::block_on(judge(&mut s, &t, &node.node_id(), 50)).unwrap();
        assert!(matches!(v, PeerVerdict::Rejected(ref r) if r.contains("expired")));
    }
}
