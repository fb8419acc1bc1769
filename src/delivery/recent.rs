//! Events kept in memory for their attempts, so an attempt rarely reads and parses its event
//! from the store. A fresh event is attempted soon by every target it was routed to: it is
//! kept until each of them took it. A backlog can be far larger than what memory should hold,
//! and it is delivered oldest first: when the budget is spent, newcomers are left to be read
//! from the store in their turn rather than pushing out the events next in line (dropping the
//! oldest made a backlog of more than a few thousand events read every one back).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::api::EventType;

/// An event as its attempts need it: the body as accepted, and what the target re-check
/// reads, parsed once.
pub(super) struct Loaded {
    pub body: Vec<u8>,
    pub received_ms: u64,
    pub head: Head,
}

impl Loaded {
    /// Bytes this entry holds, roughly.
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.body.len()
            + self.head.client_id.len()
            + self.head.user_id.as_ref().map_or(0, String::len)
    }
}

/// What an attempt needs to know of an event to re-check the target still takes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Head {
    pub client_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(rename = "type")]
    pub type_: EventType,
    /// For the delivery log: the VIN, when the event names one.
    #[serde(default)]
    data: HeadData,
}

#[derive(Deserialize, Default)]
struct HeadData {
    #[serde(default)]
    vehicle: Option<HeadVehicle>,
}

#[derive(Deserialize)]
struct HeadVehicle {
    #[serde(default)]
    vin: Option<String>,
}

impl Head {
    pub fn new(
        client_id: String,
        user_id: Option<String>,
        type_: EventType,
        vin: Option<String>,
    ) -> Self {
        Head {
            client_id,
            user_id,
            type_,
            data: HeadData {
                vehicle: Some(HeadVehicle { vin }),
            },
        }
    }

    pub fn vin(&self) -> Option<&str> {
        self.data.vehicle.as_ref()?.vin.as_deref()
    }
}

/// Bytes of fresh events held at most.
pub(super) const FRESH_BYTES: usize = 16 << 20;
/// A fresh event not taken by all its targets within this long (its target is held, or was
/// deleted) gives way to newer ones.
const STALE_MS: u64 = 60_000;
/// Events read back from the store kept at most (oldest dropped first): after a restart one
/// event is often due at many targets at once.
const READ_BACK: usize = 4096;

pub(super) struct Recent {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Seq → accepted event and how many of its targets have not taken it yet.
    fresh: BTreeMap<u64, (Arc<Loaded>, u32)>,
    bytes: usize,
    read: BTreeMap<u64, Arc<Loaded>>,
}

impl Recent {
    pub(super) fn new(budget: usize) -> Self {
        Recent {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A newly accepted event, due at `targets` targets.
    pub(super) fn accepted(&self, seq: u64, event: Arc<Loaded>, targets: u32, now_ms: u64) {
        if targets == 0 {
            return;
        }
        let size = event.size();
        let mut g = self.inner();
        while g.bytes + size > self.budget {
            let stale = g
                .fresh
                .first_key_value()
                .is_some_and(|(_, (e, _))| now_ms.saturating_sub(e.received_ms) >= STALE_MS);
            if !stale {
                return;
            }
            if let Some((_, (e, _))) = g.fresh.pop_first() {
                g.bytes -= e.size();
            }
        }
        g.bytes += size;
        g.fresh.insert(seq, (event, targets));
    }

    /// The event of `seq` if it is in memory; a fresh one counts as taken by one target (a
    /// retry counts too: another target may then read it back, never miss it).
    pub(super) fn take(&self, seq: u64) -> Option<Arc<Loaded>> {
        let mut g = self.inner();
        if let Some((e, left)) = g.fresh.get_mut(&seq) {
            let e = e.clone();
            *left -= 1;
            if *left == 0 {
                g.fresh.remove(&seq);
                g.bytes -= e.size();
            }
            return Some(e);
        }
        g.read.get(&seq).cloned()
    }

    /// An event read back from the store.
    pub(super) fn read_back(&self, seq: u64, event: Arc<Loaded>) {
        let mut g = self.inner();
        g.read.insert(seq, event);
        while g.read.len() > READ_BACK {
            g.read.pop_first();
        }
    }

    /// Drops fresh events some target never came for.
    pub(super) fn prune(&self, now_ms: u64) {
        let mut g = self.inner();
        let Inner { fresh, bytes, .. } = &mut *g;
        fresh.retain(|_, (e, _)| {
            let keep = now_ms.saturating_sub(e.received_ms) < STALE_MS;
            if !keep {
                *bytes -= e.size();
            }
            keep
        });
    }

    /// (fresh events, their bytes), for tests.
    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let g = self.inner();
        (g.fresh.len(), g.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(received_ms: u64) -> Arc<Loaded> {
        Arc::new(Loaded {
            body: vec![b'x'; 400],
            received_ms,
            head: Head::new("c".into(), None, EventType::VehicleProcessed, None),
        })
    }

    #[test]
    fn heads_are_read_from_stored_events() {
        let body = br#"{"id":"e","type":"vehicle.processed","timestamp":"t","clientId":"c","userId":"u","data":{"vehicle":{"id":"v"}}}"#;
        let h: Head = serde_json::from_slice(body).unwrap();
        assert_eq!(h.client_id, "c");
        assert_eq!(h.user_id.as_deref(), Some("u"));
        assert_eq!(h.type_, EventType::VehicleProcessed);
    }

    #[test]
    fn a_fresh_event_stays_until_each_target_took_it() {
        let r = Recent::new(FRESH_BYTES);
        r.accepted(1, ev(0), 2, 0);
        assert!(r.take(1).is_some());
        assert!(r.take(1).is_some());
        assert!(r.take(1).is_none(), "gone once both targets took it");
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn a_full_cache_keeps_the_events_next_in_line() {
        let one = ev(0).size();
        let r = Recent::new(one * 3);
        for seq in 1..=5 {
            r.accepted(seq, ev(1_000), 1, 1_000);
        }
        // The oldest three are kept (they are delivered first); 4 and 5 are read back later.
        assert!(r.take(4).is_none() && r.take(5).is_none());
        for seq in 1..=3 {
            assert!(r.take(seq).is_some(), "{seq}");
        }
        assert_eq!(r.held(), (0, 0));
    }

    #[test]
    fn events_nobody_came_for_give_way() {
        let one = ev(0).size();
        let r = Recent::new(one * 2);
        r.accepted(1, ev(0), 1, 0);
        r.accepted(2, ev(0), 1, 0);
        // A minute later a newcomer pushes out the oldest stale one.
        r.accepted(3, ev(STALE_MS), 1, STALE_MS);
        assert!(r.take(1).is_none());
        assert!(r.take(3).is_some());
        r.prune(STALE_MS * 2);
        assert_eq!(r.held(), (0, 0), "the sweep drops the rest");
    }

    #[test]
    fn read_back_events_are_kept_for_the_other_targets() {
        let r = Recent::new(FRESH_BYTES);
        r.read_back(7, ev(0));
        assert!(r.take(7).is_some());
        assert!(r.take(7).is_some());
        for seq in 100..100 + READ_BACK as u64 {
            r.read_back(seq, ev(0));
        }
        assert!(r.take(7).is_none(), "oldest read-back dropped first");
    }
}
