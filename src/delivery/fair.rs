//! A counting semaphore shared fairly between groups (namespaces): waiting groups are served
//! in turn, and no group holds more than its cap, so one tenant's slow or hanging receivers
//! cannot take the capacity every other tenant needs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

#[derive(Debug)]
struct State {
    free: usize,
    cap: usize,
    held: HashMap<String, usize>,
    /// Waiters per group, oldest first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<()>>>,
    /// Groups with waiters, in the order they are served.
    turn: VecDeque<String>,
}

impl State {
    fn take(&mut self, group: &str) {
        self.free -= 1;
        *self.held.entry(group.to_string()).or_default() += 1;
    }

    fn give_back(&mut self, group: &str) {
        self.free += 1;
        if let Some(n) = self.held.get_mut(group) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(group);
            }
        }
    }

    fn under_cap(&self, group: &str) -> bool {
        self.held.get(group).copied().unwrap_or(0) < self.cap
    }

    /// Hands free permits to waiters, one group at a time in turn.
    fn grant(&mut self) {
        let mut skipped = 0;
        while self.free > 0 && skipped < self.turn.len() {
            let Some(group) = self.turn.pop_front() else {
                return;
            };
            if !self.under_cap(&group) {
                self.turn.push_back(group);
                skipped += 1;
                continue;
            }
            let Some(queue) = self.waiting.get_mut(&group) else {
                continue;
            };
            let mut granted = false;
            while let Some(tx) = queue.pop_front() {
                // A waiter that went away is skipped.
                if tx.send(()).is_ok() {
                    granted = true;
                    break;
                }
            }
            if queue.is_empty() {
                self.waiting.remove(&group);
            } else {
                self.turn.push_back(group.clone());
            }
            if granted {
                self.take(&group);
                skipped = 0;
            }
        }
    }
}

/// Cheap to clone; clones share the permits.
#[derive(Clone, Debug)]
pub struct FairPool {
    state: Arc<Mutex<State>>,
}

/// Returned to the pool when dropped.
#[derive(Debug)]
pub struct FairPermit {
    state: Arc<Mutex<State>>,
    group: String,
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        let mut s = lock(&self.state);
        s.give_back(&self.group);
        s.grant();
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives a permit granted to a waiter that stopped waiting back to the pool.
struct Waiter {
    rx: oneshot::Receiver<()>,
    state: Arc<Mutex<State>>,
    group: String,
    done: bool,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if !self.done && self.rx.try_recv().is_ok() {
            let mut s = lock(&self.state);
            s.give_back(&self.group);
            s.grant();
        }
    }
}

impl FairPool {
    /// `total` permits; one group holds at most `cap` of them at once.
    pub fn new(total: usize, cap: usize) -> Self {
        FairPool {
            state: Arc::new(Mutex::new(State {
                free: total.max(1),
                cap: cap.clamp(1, total.max(1)),
                held: HashMap::new(),
                waiting: HashMap::new(),
                turn: VecDeque::new(),
            })),
        }
    }

    pub async fn acquire(&self, group: &str) -> FairPermit {
        let rx = {
            let mut s = lock(&self.state);
            // Free permits with waiters left means those waiters are all at their cap.
            if s.free > 0 && s.under_cap(group) && !s.waiting.contains_key(group) {
                s.take(group);
                return self.permit(group);
            }
            let (tx, rx) = oneshot::channel();
            if !s.waiting.contains_key(group) {
                s.turn.push_back(group.to_string());
            }
            s.waiting
                .entry(group.to_string())
                .or_default()
                .push_back(tx);
            rx
        };
        let mut w = Waiter {
            rx,
            state: self.state.clone(),
            group: group.to_string(),
            done: false,
        };
        // The sender is only dropped after a successful send or with the pool.
        let _ = (&mut w.rx).await;
        w.done = true;
        self.permit(group)
    }

    fn permit(&self, group: &str) -> FairPermit {
        FairPermit {
            state: self.state.clone(),
            group: group.to_string(),
        }
    }

    /// Permits held by `group` now.
    pub fn held(&self, group: &str) -> usize {
        lock(&self.state).held.get(group).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_group_never_holds_more_than_its_cap() {
        let pool = FairPool::new(4, 2);
        let a1 = pool.acquire("a").await;
        let _a2 = pool.acquire("a").await;
        let p = pool.clone();
        let a3 = tokio::spawn(async move { p.acquire("a").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!a3.is_finished(), "a third permit for a over its cap");
        // Another group still gets the rest at once.
        let _b1 = pool.acquire("b").await;
        let _b2 = pool.acquire("b").await;
        assert_eq!(pool.held("b"), 2);
        drop(a1);
        let _a3 = tokio::time::timeout(Duration::from_secs(1), a3)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(pool.held("a"), 2);
    }

    #[tokio::test]
    async fn waiting_groups_are_served_in_turn() {
        let pool = FairPool::new(1, 1);
        let first = pool.acquire("a").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for g in ["a", "a", "a", "b"] {
            let (p, o) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = p.acquire(g).await;
                o.lock().unwrap().push(g);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(permit);
            }));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // b queued last but is served second, not after all of a's.
        assert_eq!(*order.lock().unwrap(), ["a", "b", "a", "a"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_loses_no_permit() {
        let pool = FairPool::new(1, 1);
        let first = pool.acquire("a").await;
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.acquire("b").await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(first);
        let again = tokio::time::timeout(Duration::from_secs(1), pool.acquire("c")).await;
        assert!(again.is_ok(), "the permit was lost with the aborted waiter");
    }
}
