//! The voters a quorum may ask: every candidate a call pinned to it would accept, ranked by
//! the policy, and every other candidate with the reason it is excluded, so a quorum that
//! cannot reach `n` says why before asking anyone.

use crate::call::pipeline::{split_offers, Outbound};
use crate::contract::{CallError, CallRequest, ErrorCode};
use crate::membership::driver::snapshot;
use crate::routing::router::{self, Candidate};
use crate::routing::state::spec_now;

/// Eligible candidates (best first) and excluded ones with the reason.
pub type QuorumPool = (Vec<Candidate>, Vec<(Candidate, String)>);

impl Outbound {
    /// The quorum's pool for `req`: a candidate is eligible if a call pinned to it would be
    /// routed (it matches the request, RBAC allows it, its breaker admits calls, its observed
    /// success rate is at or above the quality floor). Quality tiers above the floor only
    /// order the eligible ones.
    pub fn quorum_candidates(&self, req: &CallRequest) -> Result<QuorumPool, CallError> {
        let spec = spec_now(&self.res.spec);
        let settings = spec.for_capability(&req.capability).clone();
        let offers = router::offers(&snapshot(&self.gossip).members, self.node_id, req);
        if offers.is_empty() {
            return Err(CallError::new(
                ErrorCode::NoCapability,
                format!("no agent offers {}", req.capability),
            ));
        }
        let (cands, mut excluded) = split_offers(offers);
        let (cands, forbidden) = self.sec.split_forbidden(cands, &req.capability);
        excluded.extend(forbidden);
        let views = self.res.views(
            &cands,
            &self.router,
            &self.agent,
            &settings.breaker,
            &self.locality,
        );
        let mut ok = Vec::new();
        for (i, v) in views.iter().enumerate() {
            match crate::routing::policies::eligible_alone(v, &settings.quality) {
                Ok(()) => ok.push(i),
                Err(why) => excluded.push((cands[i].clone(), why)),
            }
        }
        let sub: Vec<_> = ok.iter().map(|&i| views[i].clone()).collect();
        let order: Vec<usize> = if sub.is_empty() {
            Vec::new()
        } else {
            self.res
                .rank(&sub, req, &settings, false)
                .map(|r| r.order)
                .unwrap_or_default()
        };
        // The policy's order first, then the eligible ones it left to a lower tier.
        let rest = (0..sub.len()).filter(|j| !order.contains(j));
        let eligible = order
            .iter()
            .copied()
            .chain(rest)
            .map(|j| cands[ok[j]].clone())
            .collect();
        Ok((eligible, excluded))
    }
}
