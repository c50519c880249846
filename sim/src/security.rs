//! Security scenarios (issue 6), separate from the general scenario matrix: time to revoke a
//! member across the mesh, forged and replayed records, a Sybil flood of unadmitted
//! identities, and a member claiming another member's role. Each returns figures; tests in
//! `sim/tests/security.rs` assert them, and `agentmesh-sim-security` prints them as JSON.

use agentmesh_crypto::{AdmissionCert, Keypair, Revocation, Signed};
use agentmesh_gossip::record::RECORD_CONTEXT;
use agentmesh_gossip::state::Millis;
use agentmesh_gossip::{Config, Event, Input, MemberState, Message, NodeRecord};
use rand::Rng;
use rand_chacha::rand_core::SeedableRng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::world::{NetModel, Observer, World, EPOCH_MS, MESH_ID};

/// Warm-up before the attack or revocation, in ms.
pub const WARM_MS: Millis = 2000;

#[derive(Default)]
struct Revoked {
    /// Time each node applied the revocation.
    at: BTreeMap<usize, Millis>,
}

impl Observer for Revoked {
    fn event(&mut self, _w: &World, at: usize, ev: &Event, t: Millis) {
        if let Event::Revoked(_) = ev {
            self.at.entry(at).or_insert(t);
        }
    }
}

struct Quiet;
impl Observer for Quiet {
    fn event(&mut self, _w: &World, _at: usize, _ev: &Event, _t: Millis) {}
}

fn world(nodes: usize, seed: u64, loss: f64) -> World {
    let net = NetModel {
        loss,
        ..NetModel::default()
    };
    let mut w = World::new(nodes, seed, Config::lan, net);
    w.start_converged(nodes);
    w
}

/// Figures of the revocation scenario.
#[derive(Debug, Clone, Serialize)]
pub struct RevokeReport {
    /// Nodes.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Message loss.
    pub loss: f64,
    /// Honest live nodes (other than the revoked one) that applied the revocation.
    pub applied: usize,
    /// Honest live nodes that should have.
    pub expected: usize,
    /// Median time from issue to a node applying it, ms.
    pub time_to_revoke_ms_p50: Option<u64>,
    /// 99th percentile.
    pub time_to_revoke_ms_p99: Option<u64>,
    /// Time until every honest node applied it, ms.
    pub time_to_revoke_ms_max: Option<u64>,
    /// Honest nodes still holding the revoked node as a member or its record at the end.
    pub still_holding: usize,
    /// Honest nodes that took the revoked node back after it kept gossiping (must be 0).
    pub readmitted: usize,
}

/// The root revokes a random member at one node after warm-up; the revoked node keeps running
/// (and gossiping its record). Measures how long until every honest node dropped it.
pub fn revoke(nodes: usize, seed: u64, loss: f64, duration_s: u64) -> RevokeReport {
    let mut w = world(nodes, seed, loss);
    let mut obs = Revoked::default();
    let t0 = EPOCH_MS + WARM_MS;
    w.run_until(t0, &mut obs);
    let victim = w.rng().gen_range(0..nodes);
    let entry = (victim + 1 + w.rng().gen_range(0..nodes - 1)) % nodes;
    let rev = Revocation {
        mesh_id: MESH_ID.into(),
        node_id: w.nodes[victim].id,
        issued_at: t0 / 1000,
        reason: "sim".into(),
    }
    .sign(w.root());
    w.input(entry, Input::Revoke(Arc::new(rev)), &mut obs);
    w.run_until(EPOCH_MS + duration_s * 1000, &mut obs);
    let vid = w.nodes[victim].id;
    let honest: Vec<usize> = w.live().into_iter().filter(|&i| i != victim).collect();
    let mut times: Vec<u64> = honest
        .iter()
        .filter_map(|i| obs.at.get(i).map(|t| t - t0))
        .collect();
    times.sort_unstable();
    let pct = |p: f64| -> Option<u64> {
        (!times.is_empty()).then(|| times[((times.len() - 1) as f64 * p).round() as usize])
    };
    let still_holding = honest
        .iter()
        .filter(|&&i| {
            let g = w.nodes[i].g.as_ref().expect("live");
            g.state_of(&vid).is_some() || g.record(&vid).is_some()
        })
        .count();
    let readmitted = honest
        .iter()
        .filter(|&&i| {
            let g = w.nodes[i].g.as_ref().expect("live");
            g.is_revoked(&vid) && g.state_of(&vid) == Some(MemberState::Alive)
        })
        .count();
    RevokeReport {
        nodes,
        seed,
        loss,
        applied: times.len(),
        expected: honest.len(),
        time_to_revoke_ms_p50: pct(0.5),
        time_to_revoke_ms_p99: pct(0.99),
        time_to_revoke_ms_max: (times.len() == honest.len())
            .then(|| times.last().copied())
            .flatten(),
        still_holding,
        readmitted,
    }
}

/// Figures of the forgery, replay, Sybil and role-claim attacks.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    /// Nodes.
    pub nodes: usize,
    /// Seed.
    pub seed: u64,
    /// Honest nodes holding a record version its origin never signed (must be 0).
    pub forged_accepted: usize,
    /// Score of the forger at the honest nodes it hit, before and after (min over victims).
    pub forger_score_before: i32,
    /// Same, after the attack.
    pub forger_score_after: i32,
    /// Honest nodes whose held record of the replay victim changed (must be 0).
    pub replays_changed: usize,
    /// Sybil identities flooded.
    pub sybils: usize,
    /// Honest nodes whose member set changed during the Sybil flood (must be 0).
    pub sybil_views_changed: usize,
    /// Honest nodes that accepted a member's record carrying another member's certificate
    /// (claiming its role; must be 0).
    pub role_claims_accepted: usize,
}

fn member_set(w: &World, i: usize) -> Vec<agentmesh_crypto::NodeId> {
    w.nodes[i]
        .g
        .as_ref()
        .map(|g| g.members().into_iter().map(|m| m.node_id).collect())
        .unwrap_or_default()
}

/// Runs the attacks one after another on one converged mesh.
pub fn attacks(nodes: usize, seed: u64, sybils: usize) -> AttackReport {
    let mut w = world(nodes, seed, 0.0);
    let mut q = Quiet;
    let mut t = EPOCH_MS + WARM_MS;
    w.run_until(t, &mut q);
    let forger = 0usize;
    let victim = 1usize;
    let targets: Vec<usize> = (2..nodes.min(12)).collect();
    let fid = w.nodes[forger].id;
    let score = |w: &World| {
        targets
            .iter()
            .map(|&i| w.nodes[i].g.as_ref().expect("up").score(&fid))
            .min()
            .unwrap_or(0)
    };
    let forger_score_before = score(&w);

    // 1. Forgeries: bit flips of the victim's record and the victim's record re-signed by
    //    the forger with a higher seq.
    let rec = w.nodes[forger]
        .g
        .as_ref()
        .and_then(|g| g.signed_record(&w.nodes[victim].id))
        .expect("forger holds the victim's record");
    for k in 0..20u64 {
        let mut flipped = (*rec).clone();
        let at = (k as usize * 7) % flipped.payload.len();
        flipped.payload[at] ^= 1 << (k % 8);
        let mut body: NodeRecord = rec.decode_unverified().expect("decodes");
        body.seq += 1000 + k;
        let resigned = Signed::sign(w.key(forger), RECORD_CONTEXT, &body);
        for &i in &targets {
            w.transmit(
                forger,
                i,
                Message::Record {
                    record: Arc::new(flipped.clone()),
                },
            );
            w.transmit(
                forger,
                i,
                Message::Record {
                    record: Arc::new(resigned.clone()),
                },
            );
        }
    }
    t += 1000;
    w.run_until(t, &mut q);
    let forger_score_after = score(&w);
    let vid = w.nodes[victim].id;
    let forged_accepted = w.violations.len();

    // 2. Replays: the victim's first (older or equal) record, sent again to everyone.
    let before: Vec<_> = (2..nodes)
        .map(|i| w.nodes[i].g.as_ref().and_then(|g| g.record_version(&vid)))
        .collect();
    let old = w.first_record(victim).expect("victim signed a record");
    for i in 2..nodes {
        w.transmit(
            victim,
            i,
            Message::Record {
                record: old.clone(),
            },
        );
    }
    t += 1000;
    w.run_until(t, &mut q);
    let replays_changed = (2..nodes)
        .zip(before)
        .filter(|(i, b)| w.nodes[*i].g.as_ref().and_then(|g| g.record_version(&vid)) != *b)
        .count();

    // 3. Sybil flood: fresh identities with no certificate, or a certificate signed by a key
    //    that is not the root, join and push records through a compromised member (node 0).
    let views: Vec<_> = (2..nodes).map(|i| member_set(&w, i)).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5b11);
    let fake_root = Keypair::generate(&mut rng);
    for s in 0..sybils {
        let key = Keypair::generate(&mut rng);
        let mut rec = NodeRecord::new(key.node_id());
        rec.incarnation = t;
        if s % 2 == 1 {
            rec.cert = AdmissionCert {
                mesh_id: MESH_ID.into(),
                node_id: key.node_id(),
                roles: vec!["admin".into()],
                not_before: 0,
                not_after: u64::MAX / 2,
            }
            .sign(&fake_root)
            .ok();
        }
        let signed = Arc::new(Signed::sign(&key, RECORD_CONTEXT, &rec));
        let target = 2 + s % (nodes - 2);
        w.transmit(forger, target, Message::Record { record: signed });
    }
    t += 2000;
    w.run_until(t, &mut q);
    let sybil_views_changed = (2..nodes)
        .zip(views)
        .filter(|(i, v)| member_set(&w, *i) != *v)
        .count();

    // 4. Role claim: the forger publishes a record carrying the victim's certificate (say,
    //    the victim is admin) as its own.
    let victim_cert = w.nodes[victim]
        .g
        .as_ref()
        .and_then(|g| g.local_record().cert.clone())
        .expect("victim has a cert");
    let mut body = w.nodes[forger]
        .g
        .as_ref()
        .expect("up")
        .local_record()
        .clone();
    body.cert = Some(victim_cert);
    body.seq += 5000;
    let claim = Arc::new(Signed::sign(w.key(forger), RECORD_CONTEXT, &body));
    for i in 2..nodes {
        w.transmit(
            forger,
            i,
            Message::Record {
                record: claim.clone(),
            },
        );
    }
    t += 1000;
    w.run_until(t, &mut q);
    let role_claims_accepted = (2..nodes)
        .filter(|&i| {
            w.nodes[i]
                .g
                .as_ref()
                .and_then(|g| g.record(&fid))
                .is_some_and(|r| r.seq == body.seq)
        })
        .count();
    AttackReport {
        nodes,
        seed,
        forged_accepted,
        forger_score_before,
        forger_score_after,
        replays_changed,
        sybils,
        sybil_views_changed,
        role_claims_accepted,
    }
}
