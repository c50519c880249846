//! The node's schema store: the local agent's schemas (served to peers) and a bounded cache of
//! schemas fetched from their owners, each with its compiled validator. Keyed by
//! [`SchemaHash`], so an entry is only ever stored under the hash of its own bytes.

use crate::contract::schema::{canonical, compile, hash};
use crate::contract::CapabilitySpec;
use agentmesh_gossip::record::SchemaHash;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most fetched schemas kept (oldest evicted first; local schemas are not counted).
pub const SCHEMA_CACHE_ENTRIES_MAX: usize = 256;

/// One known schema.
#[derive(Clone)]
pub struct KnownSchema {
    /// The schema.
    pub schema: Arc<Value>,
    /// Its compiled validator (None if it does not compile here).
    pub validator: Option<Arc<jsonschema::Validator>>,
}

#[derive(Default)]
struct Inner {
    local: HashMap<SchemaHash, KnownSchema>,
    cached: HashMap<SchemaHash, KnownSchema>,
    order: VecDeque<SchemaHash>,
}

/// Local schemas plus the bounded cache of fetched ones.
#[derive(Default)]
pub struct SchemaStore {
    inner: Mutex<Inner>,
    /// Fetched schemas evicted from the cache since start.
    pub evicted_total: AtomicU64,
    /// Fetched schemas refused (hash mismatch, oversize, not JSON) since start.
    pub refused_total: AtomicU64,
}

fn known(schema: Value) -> KnownSchema {
    let validator = compile(&schema).ok().map(Arc::new);
    KnownSchema {
        schema: Arc::new(schema),
        validator,
    }
}

impl SchemaStore {
    /// Replaces the local agent's schemas with those of `caps`.
    pub fn set_local(&self, caps: &[CapabilitySpec]) {
        let mut local = HashMap::new();
        for c in caps {
            for s in [&c.input_schema, &c.output_schema].into_iter().flatten() {
                local.insert(hash(s), known(s.clone()));
            }
        }
        lock(&self.inner).local = local;
    }

    /// The schema with this hash, if held locally or cached.
    pub fn get(&self, h: &SchemaHash) -> Option<KnownSchema> {
        let g = lock(&self.inner);
        g.local.get(h).or_else(|| g.cached.get(h)).cloned()
    }

    /// Canonical bytes of a locally held or cached schema, for serving to a peer.
    pub fn bytes(&self, h: &SchemaHash) -> Option<Vec<u8>> {
        self.get(h).map(|k| canonical(&k.schema))
    }

    /// Stores bytes fetched for `h` if they are JSON and hash to `h` (a peer cannot plant a
    /// schema under another's hash). Returns the schema, or None if refused.
    pub fn insert_fetched(&self, h: SchemaHash, bytes: &[u8]) -> Option<KnownSchema> {
        let refuse = || {
            self.refused_total.fetch_add(1, Ordering::Relaxed);
            None
        };
        if bytes.len() > crate::contract::schema::SCHEMA_BYTES_MAX {
            return refuse();
        }
        let Ok(v) = serde_json::from_slice::<Value>(bytes) else {
            return refuse();
        };
        if hash(&v) != h {
            return refuse();
        }
        let k = known(v);
        let mut g = lock(&self.inner);
        if g.cached.insert(h, k.clone()).is_none() {
            g.order.push_back(h);
        }
        while g.order.len() > SCHEMA_CACHE_ENTRIES_MAX {
            if let Some(old) = g.order.pop_front() {
                g.cached.remove(&old);
                self.evicted_total.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(k)
    }

    /// Fetched schemas held now.
    pub fn cached_len(&self) -> usize {
        lock(&self.inner).cached.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fetched_bytes_must_match_their_hash() {
        let s = SchemaStore::default();
        let a = json!({"type": "string"});
        let h = hash(&a);
        assert!(s
            .insert_fetched(h, &canonical(&json!({"type": "integer"})))
            .is_none());
        assert!(s.insert_fetched(h, b"not json").is_none());
        assert_eq!(s.refused_total.load(Ordering::Relaxed), 2);
        assert!(s.get(&h).is_none());
        let k = s.insert_fetched(h, &canonical(&a)).unwrap();
        assert!(k.validator.is_some());
        assert_eq!(s.bytes(&h).unwrap(), canonical(&a));
    }

    #[test]
    fn cache_is_bounded_and_local_schemas_stay() {
        let s = SchemaStore::default();
        let local = json!({"type": "object"});
        s.set_local(&[CapabilitySpec {
            input_schema: Some(local.clone()),
            ..CapabilitySpec::named("a.b")
        }]);
        for i in 0..SCHEMA_CACHE_ENTRIES_MAX + 10 {
            let v = json!({ "maxLength": i });
            s.insert_fetched(hash(&v), &canonical(&v)).unwrap();
        }
        assert_eq!(s.cached_len(), SCHEMA_CACHE_ENTRIES_MAX);
        assert_eq!(s.evicted_total.load(Ordering::Relaxed), 10);
        assert!(s.get(&hash(&json!({ "maxLength": 0 }))).is_none());
        assert!(s.get(&hash(&local)).is_some());
    }
}
