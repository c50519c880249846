//! The member table: one compact entry per known member, in id order, stored in small chunks
//! shared copy-on-write.
//!
//! A full view is N entries on every node, so N² across a simulated mesh: at 10,000 nodes that
//! is 10⁸ entries in one process. Entries hold shared `Arc`s (no key copy), and the table is a
//! two-level copy-on-write array: a shared index of chunks of at most [`CHUNK_MAX`] entries.
//! Nodes started from one verified view ([`crate::SharedView`]) share every chunk until they
//! change it, so a mesh of N nodes costs one table plus what each node changed (a chunk of a
//! few hundred bytes per changed member). Lookups are two binary searches; sampling a
//! position is a binary search over chunk starts. State changes go through
//! [`Members::set_state`] so the live count and the tombstone set stay exact.

use agentmesh_crypto::NodeId;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::member::{MemberInfo, MemberState, SignedMember};
use crate::record::{NodeRecord, SignedRecord, Version};
use crate::time::Millis;

/// Most entries in one chunk; a chunk that grows past it is split in two. Small chunks keep
/// the copy a node makes when it changes one shared entry small.
pub(crate) const CHUNK_MAX: usize = 32;
/// Entries per chunk when a table is built by appending (room for inserts before a split).
const CHUNK_FILL: usize = CHUNK_MAX / 2;

/// The first eight bytes of an id as a big-endian number. Ids order as `(key, id)` does, so
/// a search compares this inline number first and reads the full id (behind an `Arc`) only
/// when two keys tie, which for distinct random ids almost never happens.
#[inline]
fn key_of(id: &NodeId) -> u64 {
    let b = id.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// One known member.
#[derive(Clone)]
pub(crate) struct Entry {
    /// [`key_of`] its id, held inline so lookups need not follow `info`.
    key: u64,
    /// Its signed identity, as received (forwarded verbatim).
    pub signed: Arc<SignedMember>,
    /// The verified contents of `signed`.
    pub info: Arc<MemberInfo>,
    /// Its record, signed and decoded.
    pub record: Option<(Arc<SignedRecord>, Arc<NodeRecord>)>,
    state: MemberState,
}

impl Entry {
    /// A new entry; its state is set on insertion.
    pub fn new(
        signed: Arc<SignedMember>,
        info: Arc<MemberInfo>,
        record: Option<(Arc<SignedRecord>, Arc<NodeRecord>)>,
    ) -> Self {
        Entry {
            key: key_of(&info.node_id),
            signed,
            info,
            record,
            state: MemberState::Alive,
        }
    }

    /// The member's id.
    pub fn id(&self) -> &NodeId {
        &self.info.node_id
    }

    /// Where it stands.
    pub fn state(&self) -> MemberState {
        self.state
    }

    /// Alive or suspect.
    pub fn is_live(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }

    /// The version of the record held.
    pub fn record_version(&self) -> Option<Version> {
        self.record.as_ref().map(|(_, r)| r.version())
    }

    /// Its order against the id `id` whose key is `key`.
    #[inline]
    fn cmp_to(&self, key: u64, id: &NodeId) -> std::cmp::Ordering {
        self.key.cmp(&key).then_with(|| self.id().cmp(id))
    }
}

/// A chunk: its entries right after the `Arc` header (no `Vec` header to follow first).
type Chunk = Arc<[Entry]>;

/// A chunk beside the key of its first id: finding the chunk reads no chunk, and the key
/// compared last and the chunk pointer share a cache line.
#[derive(Clone)]
struct Slot {
    first: u64,
    chunk: Chunk,
}

impl Slot {
    /// `chunk` (not empty) with its first key.
    fn new(chunk: Chunk) -> Self {
        Slot {
            first: chunk[0].key,
            chunk,
        }
    }
}

/// The chunk index: chunks in id order (none empty) with their first keys, and the position
/// of each one's first entry.
#[derive(Clone, Default)]
struct Index {
    chunks: Vec<Slot>,
    starts: Vec<u32>,
}

impl Index {
    /// The number of chunks whose first id is at most `id` (whose key is `key`).
    #[inline]
    fn chunks_at_most(&self, key: u64, id: &NodeId) -> usize {
        let n = self.chunks.len();
        partition_from(n, guess(key, 0, u64::MAX, n), |mid| {
            match self.chunks[mid].first.cmp(&key) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => self.chunks[mid].chunk[0].id() <= id,
            }
        })
    }
}

/// Where a search for `key` among `len > 0` sorted keys spread over `lo..=hi` starts. Ids are
/// public keys, so their keys spread evenly and a key's rank is close to proportional to it:
/// the search starts near the answer and touches a cache line or two instead of one per
/// halving step. Only where the search starts depends on this, never what it finds.
#[inline]
fn guess(key: u64, lo: u64, hi: u64, len: usize) -> usize {
    if key <= lo || hi <= lo {
        return 0;
    }
    let off = (key - lo) as u128 * len as u128 / ((hi - lo) as u128 + 1);
    (off as usize).min(len - 1)
}

/// The partition point of `le` over `0..len` (true on a prefix, false after it), found by
/// galloping out from the guess `g < len` and then halving the bracket: a few steps when the
/// guess is close, at most about twice a binary search when it is not.
#[inline]
fn partition_from(len: usize, g: usize, mut le: impl FnMut(usize) -> bool) -> usize {
    if len == 0 {
        return 0;
    }
    let (mut lo, mut hi);
    let mut step = 1;
    if le(g) {
        lo = g + 1;
        loop {
            let p = g + step;
            if p >= len {
                hi = len;
                break;
            }
            if le(p) {
                lo = p + 1;
                step *= 2;
            } else {
                hi = p;
                break;
            }
        }
    } else {
        hi = g;
        loop {
            if step > g {
                lo = 0;
                break;
            }
            let p = g - step;
            if le(p) {
                lo = p + 1;
                break;
            }
            hi = p;
            step *= 2;
        }
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if le(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// All known members but self.
#[derive(Clone, Default)]
pub(crate) struct Members {
    index: Arc<Index>,
    len: usize,
    live: usize,
    /// Dead and left members, with the time they went down (tombstone expiry).
    down: BTreeMap<NodeId, Millis>,
}

impl Members {
    /// `Ok((chunk, slot))` of `id`, or `Err((chunk, slot))` where it would be inserted.
    fn pos(&self, id: &NodeId) -> Result<(usize, usize), (usize, usize)> {
        let idx = &*self.index;
        if idx.chunks.is_empty() {
            return Err((0, 0));
        }
        let key = key_of(id);
        let c = idx.chunks_at_most(key, id).saturating_sub(1);
        let Slot { first: lo, chunk } = &idx.chunks[c];
        let lo = *lo;
        let hi = idx
            .chunks
            .get(c + 1)
            .map(|n| n.first)
            .map_or(u64::MAX, |k| k.saturating_sub(1));
        let s = partition_from(chunk.len(), guess(key, lo, hi, chunk.len()), |i| {
            chunk[i].cmp_to(key, id).is_lt()
        });
        match chunk.get(s) {
            Some(e) if e.cmp_to(key, id).is_eq() => Ok((c, s)),
            _ => Err((c, s)),
        }
    }

    /// The chunk `c`, made private to this table (copied if shared).
    fn chunk_mut(&mut self, c: usize) -> &mut [Entry] {
        Arc::make_mut(&mut Arc::make_mut(&mut self.index).chunks[c].chunk)
    }

    /// Members held (any state).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Alive or suspect members.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The entry for `id`.
    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.pos(id)
            .ok()
            .map(|(c, s)| &self.index.chunks[c].chunk[s])
    }

    /// The entry for `id`, mutable (its chunk is copied if shared). Its state changes only
    /// through [`Members::set_state`].
    pub fn get_mut(&mut self, id: &NodeId) -> Option<&mut Entry> {
        let (c, s) = self.pos(id).ok()?;
        Some(&mut self.chunk_mut(c)[s])
    }

    /// True if `id` is held.
    pub fn contains_key(&self, id: &NodeId) -> bool {
        self.pos(id).is_ok()
    }

    /// True if `id` sorts after every held member (so it is not held; O(1)).
    pub fn is_after_last(&self, id: &NodeId) -> bool {
        self.index
            .chunks
            .last()
            .and_then(|c| c.chunk.last())
            .is_none_or(|e| e.id() < id)
    }

    /// The entry at position `i` in id order (for sampling).
    pub fn nth(&self, i: usize) -> Option<&Entry> {
        if i >= self.len {
            return None;
        }
        let starts = &self.index.starts;
        let n = starts.len();
        let g = (i as u128 * n as u128 / self.len as u128) as usize;
        let c = partition_from(n, g.min(n - 1), |c| starts[c] as usize <= i) - 1;
        self.index.chunks[c].chunk.get(i - starts[c] as usize)
    }

    /// Entries in id order, with their ids.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &Entry)> {
        self.values().map(|e| (e.id(), e))
    }

    /// Entries in id order.
    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.index.chunks.iter().flat_map(|c| c.chunk.iter())
    }

    /// Dead and left members with the time they went down.
    pub fn down(&self) -> &BTreeMap<NodeId, Millis> {
        &self.down
    }

    /// Makes room for `n` more entries (bulk loads).
    pub fn reserve(&mut self, n: usize) {
        let idx = Arc::make_mut(&mut self.index);
        let more = n.div_ceil(CHUNK_FILL);
        idx.chunks.reserve_exact(more);
        idx.starts.reserve_exact(more);
    }

    /// Inserts a new member as alive; returns false if it is already held. Appending in id
    /// order copies the last chunk (at most [`CHUNK_FILL`] entries); an insert elsewhere
    /// copies one chunk and shifts the chunk starts.
    pub fn insert(&mut self, e: Entry) -> bool {
        let mut e = e;
        e.state = MemberState::Alive;
        if self.is_after_last(e.id()) {
            let len = self.len as u32;
            let idx = Arc::make_mut(&mut self.index);
            match idx.chunks.last_mut() {
                Some(Slot { chunk: last, .. }) if last.len() < CHUNK_FILL => {
                    let mut v = Vec::with_capacity(last.len() + 1);
                    v.extend_from_slice(last);
                    v.push(e);
                    *last = v.into();
                }
                _ => {
                    idx.chunks.push(Slot {
                        first: e.key,
                        chunk: Arc::from([e]),
                    });
                    idx.starts.push(len);
                }
            }
        } else {
            let (c, s) = match self.pos(e.id()) {
                Ok(_) => return false,
                Err(at) => at,
            };
            let idx = Arc::make_mut(&mut self.index);
            let mut chunk = idx.chunks[c].chunk.to_vec();
            chunk.insert(s, e);
            let split = (chunk.len() > CHUNK_MAX).then(|| chunk.split_off(chunk.len() / 2));
            idx.chunks[c] = Slot::new(chunk.into());
            for st in &mut idx.starts[c + 1..] {
                *st += 1;
            }
            if let Some(tail) = split {
                let at = idx.starts[c] + idx.chunks[c].chunk.len() as u32;
                idx.chunks.insert(c + 1, Slot::new(tail.into()));
                idx.starts.insert(c + 1, at);
            }
        }
        self.len += 1;
        self.live += 1;
        true
    }

    /// Forgets a member.
    pub fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let (c, s) = self.pos(id).ok()?;
        let idx = Arc::make_mut(&mut self.index);
        let mut chunk = idx.chunks[c].chunk.to_vec();
        let e = chunk.remove(s);
        let empty = chunk.is_empty();
        for st in &mut idx.starts[c + 1..] {
            *st -= 1;
        }
        if empty {
            idx.chunks.remove(c);
            idx.starts.remove(c);
        } else {
            idx.chunks[c] = Slot::new(chunk.into());
        }
        self.len -= 1;
        if e.is_live() {
            self.live -= 1;
        }
        self.down.remove(id);
        Some(e)
    }

    /// Moves a member to `state` at `now`, keeping the counts and tombstones exact.
    pub fn set_state(&mut self, id: &NodeId, state: MemberState, now: Millis) {
        let Ok((c, s)) = self.pos(id) else { return };
        let was_live = self.index.chunks[c].chunk[s].is_live();
        if self.index.chunks[c].chunk[s].state != state {
            self.chunk_mut(c)[s].state = state;
        }
        let is_live = matches!(state, MemberState::Alive | MemberState::Suspect);
        match (was_live, is_live) {
            (true, false) => {
                self.live -= 1;
                self.down.insert(*id, now);
            }
            (false, true) => {
                self.live += 1;
                self.down.remove(id);
            }
            (false, false) => {
                self.down.insert(*id, now);
            }
            (true, true) => {}
        }
    }
}

/// SWIM's shuffled round robin without storing a shuffled list (N ids per node would be N²
/// in the simulator): each round walks the table in an affine permutation
/// `(start + i·stride) mod n` with a random start and a random stride coprime to `n`, so every
/// member is probed once per round, in an order that differs between rounds and nodes.
/// Members that join mid-round are probed from the next round on.
#[derive(Default)]
pub(crate) struct ProbeCycle {
    n: usize,
    start: usize,
    stride: usize,
    i: usize,
}

impl ProbeCycle {
    /// The next position to probe in a table of `len` members, or None if it is empty.
    pub fn next(&mut self, len: usize, rng: &mut impl rand::Rng) -> Option<usize> {
        if len == 0 {
            return None;
        }
        if self.i >= self.n {
            self.n = len;
            self.start = rng.gen_range(0..len);
            self.stride = 1;
            for _ in 0..64 {
                let s = rng.gen_range(1..=len);
                if gcd(s, len) == 1 {
                    self.stride = s;
                    break;
                }
            }
            self.i = 0;
        }
        let pos = (self.start + self.i * self.stride) % self.n;
        self.i += 1;
        Some(pos)
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentmesh_crypto::{Keypair, Signed};
    use rand::SeedableRng;

    fn entry(k: &Keypair) -> Entry {
        let info = MemberInfo {
            node_id: k.node_id(),
            addrs: vec![],
            incarnation: 1,
            record_version: Version::default(),
            record_hash: 0,
            leaving: false,
        };
        let signed = Arc::new(Signed::sign(k, crate::member::MEMBER_CONTEXT, &info));
        Entry::new(signed, Arc::new(info), None)
    }

    #[test]
    fn sorted_insert_counts_and_tombstones() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let keys: Vec<Keypair> = (0..20).map(|_| Keypair::generate(&mut rng)).collect();
        let mut t = Members::default();
        for k in &keys {
            assert!(t.insert(entry(k)));
            assert!(!t.insert(entry(k)));
        }
        assert_eq!(t.len(), 20);
        assert_eq!(t.live(), 20);
        let ids: Vec<NodeId> = t.iter().map(|(id, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        let a = keys[3].node_id();
        t.set_state(&a, MemberState::Suspect, 5);
        assert_eq!(t.live(), 20);
        t.set_state(&a, MemberState::Dead, 6);
        assert_eq!(t.live(), 19);
        assert_eq!(t.down().get(&a), Some(&6));
        t.set_state(&a, MemberState::Alive, 7);
        assert_eq!(t.live(), 20);
        assert!(t.down().is_empty());
        t.set_state(&a, MemberState::Left, 8);
        assert!(t.remove(&a).is_some());
        assert_eq!((t.len(), t.live()), (19, 19));
        assert!(t.down().is_empty());
        assert!(t.get(&a).is_none());
        assert!(t.get(&keys[4].node_id()).is_some());
    }

    #[test]
    fn ids_sharing_a_key_still_order_and_find() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let k = Keypair::generate(&mut rng);
        let mut ids: Vec<NodeId> = Vec::new();
        for i in 0..200u32 {
            let mut b = [0u8; 32];
            // Few distinct keys, so most comparisons tie on the key and read the full id.
            b[7] = (i % 3) as u8;
            b[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            ids.push(NodeId(b));
        }
        let mut t = Members::default();
        for id in &ids {
            let mut e = entry(&k);
            let mut info = (*e.info).clone();
            info.node_id = *id;
            e = Entry::new(e.signed, Arc::new(info), None);
            assert!(t.insert(e));
        }
        let held: Vec<NodeId> = t.iter().map(|(id, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(held, sorted);
        for id in &ids {
            assert_eq!(t.get(id).map(|e| *e.id()), Some(*id));
        }
        for id in ids.iter().step_by(2) {
            assert!(t.remove(id).is_some());
        }
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(t.contains_key(id), i % 2 == 1);
        }
        assert!(!t.contains_key(&NodeId([0xff; 32])));
    }

    #[test]
    fn partition_from_any_guess_matches_partition_point() {
        for len in 0..40usize {
            for cut in 0..=len {
                let v: Vec<bool> = (0..len).map(|i| i < cut).collect();
                for g in 0..len.max(1) {
                    let g = g.min(len.saturating_sub(1));
                    assert_eq!(partition_from(len, g, |i| v[i]), cut, "{len} {cut} {g}");
                }
            }
        }
        assert_eq!(guess(5, 0, u64::MAX, 1), 0);
        assert_eq!(guess(u64::MAX, 0, u64::MAX, 10), 9);
        assert_eq!(guess(0, 0, u64::MAX, 10), 0);
        assert_eq!(guess(7, 9, 3, 10), 0);
    }

    #[test]
    fn lookups_and_positions_in_a_larger_table() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let keys: Vec<Keypair> = (0..300).map(|_| Keypair::generate(&mut rng)).collect();
        let mut t = Members::default();
        for k in &keys {
            assert!(t.insert(entry(k)));
        }
        let held: Vec<NodeId> = t.iter().map(|(id, _)| *id).collect();
        for (i, id) in held.iter().enumerate() {
            assert_eq!(t.nth(i).map(|e| *e.id()), Some(*id));
            assert!(t.contains_key(id));
        }
        assert!(t.nth(held.len()).is_none());
        assert!(!t.contains_key(&NodeId([0; 32])));
        assert!(!t.contains_key(&NodeId([0xff; 32])));
    }

    #[test]
    fn probe_cycle_visits_every_position_once_per_round() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for len in [1usize, 2, 7, 12, 100] {
            let mut c = ProbeCycle::default();
            for _ in 0..3 {
                let mut seen: Vec<usize> =
                    (0..len).map(|_| c.next(len, &mut rng).unwrap()).collect();
                seen.sort();
                assert_eq!(seen, (0..len).collect::<Vec<_>>());
            }
        }
        assert_eq!(ProbeCycle::default().next(0, &mut rng), None);
    }
}
