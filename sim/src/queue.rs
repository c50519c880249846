//! The event queue: events in time order, and in push order within one millisecond.
//!
//! It pops exactly what a binary heap keyed by `(time, push sequence)` pops, but keeps one
//! bucket per millisecond in push order, so an event is never moved again once pushed (a heap
//! of large events spent a tenth of a 10,000-node run sifting them) and the order needs no
//! sequence number.

use std::collections::{BTreeMap, VecDeque};

/// Most emptied buckets kept for reuse.
const SPARE_BUCKETS_MAX: usize = 4096;

/// Events of type `T` by time.
pub struct TimeQueue<T> {
    /// The bucket being drained and its time (events pushed for that time go to its end).
    cur: VecDeque<T>,
    cur_t: u64,
    /// Every other time with events.
    later: BTreeMap<u64, Vec<T>>,
    spare: Vec<Vec<T>>,
}

impl<T> Default for TimeQueue<T> {
    fn default() -> Self {
        TimeQueue {
            cur: VecDeque::new(),
            cur_t: 0,
            later: BTreeMap::new(),
            spare: Vec::new(),
        }
    }
}

impl<T> TimeQueue<T> {
    /// Adds `ev` at time `t`, after every event already queued for `t`.
    pub fn push(&mut self, t: u64, ev: T) {
        if t == self.cur_t && (!self.cur.is_empty() || !self.later.contains_key(&t)) {
            self.cur.push_back(ev);
            return;
        }
        let spare = &mut self.spare;
        self.later
            .entry(t)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(ev);
    }

    /// The time of the next event.
    pub fn peek_time(&self) -> Option<u64> {
        let later = self.later.keys().next().copied();
        match (self.cur.is_empty(), later) {
            (false, Some(l)) if l < self.cur_t => Some(l),
            (false, _) => Some(self.cur_t),
            (true, l) => l,
        }
    }

    /// Removes the next event.
    pub fn pop(&mut self) -> Option<(u64, T)> {
        let t = self.peek_time()?;
        if t != self.cur_t || self.cur.is_empty() {
            let (t, bucket) = self.later.pop_first()?;
            let old = std::mem::replace(&mut self.cur, VecDeque::from(bucket));
            if !old.is_empty() {
                // Events of the current time wait behind an earlier bucket pushed late.
                let mut v = Vec::from(old);
                let back = self.later.entry(self.cur_t).or_default();
                v.append(back);
                *back = v;
            } else if self.spare.len() < SPARE_BUCKETS_MAX {
                let mut v = Vec::from(old);
                v.clear();
                self.spare.push(v);
            }
            self.cur_t = t;
        }
        self.cur.pop_front().map(|ev| (t, ev))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn pops_what_a_heap_keyed_by_time_and_sequence_pops() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut q = TimeQueue::default();
        let mut h = BinaryHeap::new();
        let mut seq = 0u64;
        let mut now = 0u64;
        for _ in 0..20_000 {
            if rng.gen_bool(0.55) {
                // Mostly ahead of now, sometimes at now, rarely behind it.
                let t = match rng.gen_range(0..10) {
                    0 => now,
                    1 => now.saturating_sub(rng.gen_range(0..5)),
                    _ => now + rng.gen_range(0..60),
                };
                seq += 1;
                q.push(t, seq);
                h.push(Reverse((t, seq)));
            } else {
                let a = q.pop();
                let b = h.pop().map(|Reverse(x)| x);
                assert_eq!(a, b);
                if let Some((t, _)) = a {
                    now = t;
                }
                assert_eq!(q.peek_time(), h.peek().map(|Reverse((t, _))| *t));
            }
        }
        while let Some(Reverse(x)) = h.pop() {
            assert_eq!(q.pop(), Some(x));
        }
        assert_eq!(q.pop(), None);
    }
}
