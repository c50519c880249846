//! The node's connection tasks: admission on every new connection (both directions), joining
//! through seeds and mDNS discoveries, and waiting for the first peer.

use super::*;

impl MeshHandle {
    /// Opens a control-plane stream of `protocol` to `id`, connecting and waiting for mutual
    /// admission first; the open is bounded by [`caller::STREAM_OPEN_TIMEOUT`]. Shared by the
    /// audit and schema protocols.
    pub(super) async fn open_admitted_stream(
        &self,
        id: NodeId,
        addrs: &[String],
        protocol: libp2p::StreamProtocol,
    ) -> Result<libp2p::Stream, CallError> {
        let unreachable = |m: String| CallError::new(ErrorCode::AgentUnreachable, m);
        let peer = crate::net::transport::peer_of(&id)
            .map_err(|e| CallError::new(ErrorCode::Internal, e.to_string()))?;
        if !self.0.calls.admission.is_mutual(&id) {
            self.0
                .calls
                .transport
                .connect(peer, transport::parse_addrs(addrs))
                .await
                .map_err(|e| unreachable(format!("cannot connect: {e}")))?;
            self.0
                .calls
                .admission
                .wait_mutual(&id, ADMIT_TIMEOUT)
                .await
                .map_err(|r| unreachable(format!("peer not admitted: {r}")))?;
        }
        let mut control = self.0.calls.transport.control.clone();
        tokio::time::timeout(
            caller::STREAM_OPEN_TIMEOUT,
            control.open_stream(peer, protocol),
        )
        .await
        .map_err(|_| unreachable("stream open timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))
    }

    pub(super) async fn connection_events(
        self,
        mut events: mpsc::Receiver<TransportEvent>,
        hello: AdmitHello,
        mdns: bool,
    ) {
        while let Some(ev) = events.recv().await {
            match ev {
                TransportEvent::Connected(peer) => {
                    let Ok(node) = NodeId::from_peer_id(&peer) else {
                        self.0.calls.transport.disconnect(peer);
                        continue;
                    };
                    self.0.calls.admission.connected(node);
                    // The current certificate: a renewal is presented without a restart.
                    let hello = match self.0.calls.sec.cert() {
                        Some(c) => AdmitHello { cert: Some(c) },
                        None => hello.clone(),
                    };
                    tokio::spawn(self.clone().admit_outbound(peer, node, hello));
                }
                TransportEvent::Disconnected(peer) => {
                    if let Ok(node) = NodeId::from_peer_id(&peer) {
                        self.0.calls.admission.disconnected(&node);
                    }
                }
                TransportEvent::Discovered(peer, addrs) if mdns => {
                    tokio::spawn(self.clone().join_discovered(peer, addrs));
                }
                TransportEvent::Discovered(..) => {}
            }
        }
    }

    /// Presents our certificate to a newly connected peer and records its verdict.
    pub(super) async fn admit_outbound(
        self,
        peer: libp2p::PeerId,
        node: NodeId,
        hello: AdmitHello,
    ) {
        // Transient failures (a stream reset while both sides dial at once, a busy peer) are
        // retried with backoff; a verdict, either way, ends the exchange.
        let mut backoff = ADMIT_RETRY_BACKOFF_MIN;
        for attempt in 1..=ADMIT_ATTEMPTS_MAX {
            let mut control = self.0.calls.transport.control.clone();
            let exchange = async {
                let mut s = control
                    .open_stream(peer, ADMIT_PROTOCOL)
                    .await
                    .map_err(|e| e.to_string())?;
                admission::present(&mut s, &hello)
                    .await
                    .map_err(|e| e.to_string())
            };
            let outcome = tokio::time::timeout(ADMIT_TIMEOUT, exchange).await;
            let transient = matches!(outcome, Ok(Err(_)) | Err(_));
            if transient && attempt < ADMIT_ATTEMPTS_MAX {
                tracing::debug!(%peer, attempt, "admission exchange failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                continue;
            }
            self.record_admission_outcome(peer, node, outcome);
            return;
        }
    }

    pub(super) fn record_admission_outcome(
        &self,
        peer: libp2p::PeerId,
        node: NodeId,
        outcome: Result<Result<AdmitVerdict, String>, tokio::time::error::Elapsed>,
    ) {
        match outcome {
            Ok(Ok(AdmitVerdict::Accepted)) => {
                tracing::debug!(%peer, "admitted by peer");
                self.0
                    .calls
                    .admission
                    .set_ours(node, PeerVerdict::Admitted { roles: Vec::new() });
            }
            Ok(Ok(AdmitVerdict::Rejected { reason })) => {
                tracing::error!("admission rejected by {peer}: {reason}");
                self.0
                    .calls
                    .admission
                    .set_ours(node, PeerVerdict::Rejected(reason));
            }
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "admission exchange failed");
                self.0.calls.admission.fail_ours(node, e);
            }
            Err(_) => {
                tracing::warn!(%peer, "admission exchange timed out");
                self.0.calls.admission.fail_ours(node, "timed out".into());
            }
        }
    }

    /// Judges certificates presented to us.
    pub(super) async fn admit_inbound(self, mut incoming: libp2p_stream::IncomingStreams) {
        let slots = Arc::new(tokio::sync::Semaphore::new(ADMIT_STREAMS_MAX));
        while let Some((peer, mut stream)) = incoming.next().await {
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(node) = NodeId::from_peer_id(&peer) else {
                    this.0.calls.transport.disconnect(peer);
                    return;
                };
                let now_s = now_ms() / 1000;
                let judged = tokio::time::timeout(
                    ADMIT_TIMEOUT,
                    admission::judge(&mut stream, &this.0.calls.admission, &node, now_s),
                )
                .await;
                let verdict = match judged {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => PeerVerdict::Rejected(format!("admission exchange failed: {e}")),
                    Err(_) => PeerVerdict::Rejected("admission exchange timed out".into()),
                };
                if let PeerVerdict::Rejected(reason) = &verdict {
                    tracing::warn!(%peer, %reason, "refusing peer at admission");
                }
                let verdict = match verdict {
                    PeerVerdict::Admitted { .. } if this.0.calls.sec.is_revoked(&node) => {
                        PeerVerdict::Rejected("revoked by the mesh root".into())
                    }
                    v => v,
                };
                let rejected = matches!(verdict, PeerVerdict::Rejected(_));
                this.0.calls.admission.set_theirs(node, verdict);
                if rejected {
                    // Let the verdict reach the peer before closing the connection.
                    tokio::time::sleep(REJECT_LINGER).await;
                    this.0.calls.transport.disconnect(peer);
                }
            });
        }
    }

    /// Dials the seeds until one admits us, then joins through those that did.
    pub(super) async fn join_seeds(self, seeds: Vec<String>) {
        let addrs = transport::parse_addrs(&seeds);
        if addrs.is_empty() {
            tracing::error!(?seeds, "no valid seed address; cannot join");
            return;
        }
        let mut pause = JOIN_RETRY_MIN;
        loop {
            let mut joined = Vec::new();
            for a in &addrs {
                let peer = match self.0.calls.transport.dial_addr(a.clone()).await {
                    Ok(p) if p == self.0.calls.transport.local_peer => continue,
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(seed = %a, error = %e, "seed not reachable");
                        continue;
                    }
                };
                let Ok(node) = NodeId::from_peer_id(&peer) else {
                    continue;
                };
                match self
                    .0
                    .calls
                    .admission
                    .wait_mutual(&node, ADMIT_TIMEOUT)
                    .await
                {
                    Ok(()) => joined.push(node),
                    Err(reason) => tracing::debug!(seed = %a, %reason, "seed not admitted"),
                }
            }
            let only_self = addrs
                .iter()
                .all(|a| self.0.calls.transport.listen_addrs.iter().any(|l| l == a));
            if only_self && joined.is_empty() {
                self.0.joined.store(true, Ordering::Release);
                return;
            }
            if !joined.is_empty() {
                tracing::info!(seeds = joined.len(), "joining the mesh");
                let _ = self.0.driver.send(DriverCmd::Join(joined)).await;
                // The join is one frame; if it was lost, nobody knows us yet. Confirm by
                // seeing another live member, else join again.
                if self.wait_for_peers(JOIN_CONFIRM_TIMEOUT).await {
                    self.0.joined.store(true, Ordering::Release);
                    return;
                }
                tracing::debug!("join not confirmed yet; retrying");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(JOIN_RETRY_MAX);
        }
    }

    /// Waits until the membership shows another alive member.
    pub(super) async fn wait_for_peers(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let others = snapshot(&self.0.calls.gossip)
                .members
                .iter()
                .any(|m| m.node_id != self.0.calls.node_id && m.state == MemberState::Alive);
            if others {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) async fn join_discovered(self, peer: libp2p::PeerId, addrs: Vec<libp2p::Multiaddr>) {
        let Ok(node) = NodeId::from_peer_id(&peer) else {
            return;
        };
        self.0.calls.transport.dial_peer(peer, addrs);
        if self
            .0
            .calls
            .admission
            .wait_mutual(&node, ADMIT_TIMEOUT)
            .await
            .is_ok()
        {
            let _ = self.0.driver.send(DriverCmd::Join(vec![node])).await;
            self.0.joined.store(true, Ordering::Release);
        }
    }
}
