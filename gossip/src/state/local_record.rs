//! This node's own record: updates from the driver, load refresh and re-publishing.

use agentmesh_crypto::Signed;
use std::sync::Arc;

use super::{Gossip, RecordUpdate};
use crate::member::Update;
use crate::record::{RECORD_BYTES_MAX, RECORD_CONTEXT};
use crate::time::Millis;

impl Gossip {
    // ---- local record ----

    pub(super) fn update_local(&mut self, u: RecordUpdate, now: Millis) {
        match u {
            RecordUpdate::Load { in_flight } => {
                self.local.in_flight = in_flight;
                let cap = self.local.max_concurrency.max(1) as f64;
                let delta = (in_flight as f64 - self.published_load as f64).abs() / cap;
                let to_idle = in_flight == 0 && self.published_load != 0;
                if delta >= self.cfg.load_hysteresis || to_idle {
                    self.publish(now);
                }
                return;
            }
            RecordUpdate::Agent(a) => self.local.agent = a,
            RecordUpdate::Health(h) => self.local.health = h,
            RecordUpdate::Priority(p) => self.local.priority = p,
            RecordUpdate::Cert(c) => self.local.cert = c,
            RecordUpdate::MaxConcurrency(m) => self.local.max_concurrency = m,
            RecordUpdate::Ext { key, value } => match value {
                Some(v) => {
                    if self.local.ext.len() < crate::record::EXTENSIONS_MAX
                        || self.local.ext.contains_key(&key)
                    {
                        self.local.ext.insert(key, v);
                    }
                }
                None => {
                    self.local.ext.remove(&key);
                }
            },
        }
        self.publish(now);
    }

    pub(super) fn maybe_refresh_load(&mut self, now: Millis) {
        if self.local.in_flight != self.published_load
            && now >= self.last_publish + self.cfg.load_refresh_ms
        {
            self.publish(now);
        }
    }

    /// Signs a new record version and spreads it: membership announces the version, Plumtree
    /// pushes the record.
    fn publish(&mut self, now: Millis) {
        self.local.seq += 1;
        self.local.incarnation = self.incarnation();
        if self.local.check_limits().is_err() {
            self.local.seq -= 1;
            return;
        }
        let signed = Arc::new(Signed::sign(&self.key, RECORD_CONTEXT, &self.local));
        if signed.payload.len() + 96 > RECORD_BYTES_MAX {
            self.local.seq -= 1;
            return;
        }
        self.local_signed = signed.clone();
        self.published_load = self.local.in_flight;
        self.last_publish = now;
        let inc = self.incarnation();
        self.resign_member(inc);
        self.enqueue(Update::Alive(self.local_member.clone()));
        self.broadcast_record(signed, None);
    }
}
