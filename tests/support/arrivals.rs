//! A receiver's deliveries read back as per-vehicle sequences, for tests that post each
//! vehicle's events with a counter `data.n` (0, 1, 2, … in posting order) and then check
//! what arrived: which accepted events never did, whether each vehicle's FIRST arrivals came
//! in increasing `n` (a repeat of an old event is at-least-once delivery; a new event before
//! an older one of its vehicle is an order fault), how many arrivals were repeats, and how
//! long each partition's deliveries paused around a moment (a failover).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use super::receiver::Received;

/// One successful delivery of an event carrying `data.n`.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub id: String,
    pub vehicle: String,
    pub n: u64,
    pub at: Instant,
    /// Its place among all arrivals (0-based).
    pub index: usize,
}

/// The arrivals among `received` answered 200, in arrival order; requests without a
/// vehicle or `data.n` are left out.
pub fn arrivals(received: &[Received]) -> Vec<Arrival> {
    received
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| {
            Some((
                r.body["id"].as_str()?.to_string(),
                r.body["data"]["vehicle"]["id"].as_str()?.to_string(),
                r.body["data"]["n"].as_u64()?,
                r.at,
            ))
        })
        .enumerate()
        .map(|(index, (id, vehicle, n, at))| Arrival {
            id,
            vehicle,
            n,
            at,
            index,
        })
        .collect()
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct Report {
    /// Arrivals in all.
    pub arrivals: usize,
    /// Distinct events that arrived.
    pub delivered: usize,
    /// Arrivals of an event that had arrived before.
    pub duplicates: usize,
    /// Repeats that came after a newer event of the same vehicle had arrived (allowed: a
    /// redelivery after a failover).
    pub late_repeats: Vec<Arrival>,
    /// Accepted events that never arrived.
    pub missing: Vec<String>,
    /// First arrivals of a vehicle out of `n` order, one line each.
    pub out_of_order: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.out_of_order.is_empty()
    }

    /// The faults, for a failure message (at most `max` of each kind).
    pub fn faults(&self, max: usize) -> String {
        let mut s = String::new();
        if !self.missing.is_empty() {
            s.push_str(&format!(
                "{} accepted events never arrived, e.g. {:?}\n",
                self.missing.len(),
                &self.missing[..self.missing.len().min(max)]
            ));
        }
        if !self.out_of_order.is_empty() {
            s.push_str(&format!(
                "{} first arrivals out of per-vehicle order:\n  {}\n",
                self.out_of_order.len(),
                self.out_of_order[..self.out_of_order.len().min(max)].join("\n  ")
            ));
        }
        s
    }
}

/// Checks `arrivals` against the `accepted` ids.
pub fn check(arrivals: &[Arrival], accepted: &BTreeSet<String>) -> Report {
    let mut seen: HashSet<&str> = HashSet::new();
    // Per vehicle: the highest n that has arrived, and where (id, index).
    let mut last: HashMap<&str, (u64, &str, usize)> = HashMap::new();
    let mut report = Report {
        arrivals: arrivals.len(),
        ..Report::default()
    };
    for a in arrivals {
        let first = seen.insert(&a.id);
        let prev = last.get(a.vehicle.as_str()).copied();
        match (first, prev) {
            (true, Some((pn, pid, pi))) if a.n <= pn => report.out_of_order.push(format!(
                "vehicle {}: {} (n={}) arrived first as #{} after {} (n={}) had arrived as #{}",
                a.vehicle, a.id, a.n, a.index, pid, pn, pi
            )),
            (false, Some((pn, _, _))) if a.n < pn => report.late_repeats.push(a.clone()),
            _ => {}
        }
        if prev.is_none_or(|(pn, _, _)| a.n > pn) {
            last.insert(&a.vehicle, (a.n, &a.id, a.index));
        }
    }
    report.delivered = seen.len();
    report.duplicates = report.arrivals - report.delivered;
    report.missing = accepted
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .cloned()
        .collect();
    report
}

/// Arrivals at or after `after` of events that had first arrived before `before`, as
/// `vehicle … (#index) …` lines.
pub fn again_after(arrivals: &[Arrival], before: Instant, after: Instant) -> Vec<String> {
    let mut first: HashMap<&str, Instant> = HashMap::new();
    let mut out = Vec::new();
    for a in arrivals {
        let f = *first.entry(&a.id).or_insert(a.at);
        if a.at >= after && f < before {
            out.push(format!(
                "vehicle {}: {} (n={}) again as #{}, {:.2}s after; it first arrived {:.2}s before",
                a.vehicle,
                a.id,
                a.n,
                a.index,
                a.at.duration_since(after).as_secs_f64(),
                after.duration_since(f).as_secs_f64()
            ));
        }
    }
    out
}

/// How one group of vehicles (a partition) fared around a moment `t`.
#[derive(Debug)]
pub struct Resume {
    pub group: u32,
    /// The last arrival before `t`, as time before it.
    pub last_before: Option<Duration>,
    /// The first arrival at or after `t`, as time after it.
    pub first_after: Option<Duration>,
}

/// For each group (`group_of(vehicle)`) that had arrivals before `t`: when its deliveries
/// resumed after `t`. Sorted by the resumption, slowest first (none: never, first of all).
pub fn resumes(arrivals: &[Arrival], t: Instant, group_of: impl Fn(&str) -> u32) -> Vec<Resume> {
    let mut groups: BTreeMap<u32, (Option<Instant>, Option<Instant>)> = BTreeMap::new();
    for a in arrivals {
        let g = groups.entry(group_of(&a.vehicle)).or_default();
        if a.at < t {
            g.0 = Some(g.0.map_or(a.at, |b| b.max(a.at)));
        } else {
            g.1 = Some(g.1.map_or(a.at, |f| f.min(a.at)));
        }
    }
    let mut out: Vec<Resume> = groups
        .into_iter()
        .filter(|(_, (before, _))| before.is_some())
        .map(|(group, (before, after))| Resume {
            group,
            last_before: before.map(|b| t - b),
            first_after: after.map(|f| f - t),
        })
        .collect();
    out.sort_by_key(|r| std::cmp::Reverse(r.first_after.unwrap_or(Duration::MAX)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(vehicle: &str, n: u64, index: usize) -> Arrival {
        Arrival {
            id: format!("{vehicle}-{n}"),
            vehicle: vehicle.into(),
            n,
            at: Instant::now(),
            index,
        }
    }

    #[test]
    fn a_repeat_is_allowed_a_new_event_before_an_older_one_is_not() {
        let accepted: BTreeSet<String> = ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]
            .into_iter()
            .map(String::from)
            .collect();
        // a: 0 1 then 1 again (a redelivery), 2. b: 0 2 1 (1 overtaken by 2).
        let seq = [
            ("a", 0),
            ("b", 0),
            ("a", 1),
            ("b", 2),
            ("a", 1),
            ("b", 1),
            ("a", 2),
        ];
        let got: Vec<Arrival> = seq
            .iter()
            .enumerate()
            .map(|(i, (v, n))| at(v, *n, i))
            .collect();
        let r = check(&got, &accepted);
        assert_eq!((r.arrivals, r.delivered, r.duplicates), (7, 6, 1));
        assert_eq!(r.late_repeats.len(), 0, "a-1 repeated before a-2 arrived");
        assert_eq!(r.out_of_order.len(), 1, "{:?}", r.out_of_order);
        assert!(r.out_of_order[0].starts_with("vehicle b: b-1 (n=1)"));
        assert!(r.missing.is_empty());

        // A repeat after a newer one is counted, not a fault; a lost event is.
        let got: Vec<Arrival> = [("a", 0), ("a", 1), ("a", 0)]
            .iter()
            .enumerate()
            .map(|(i, (v, n))| at(v, *n, i))
            .collect();
        let r = check(&got, &accepted);
        assert_eq!(r.late_repeats.len(), 1);
        assert!(r.out_of_order.is_empty());
        assert_eq!(r.missing.len(), 4);
        assert!(!r.ok());
    }
}
