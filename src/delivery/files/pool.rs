//! Sessions pooled per endpoint (server, account and settings): at most `maxConnections` in
//! use at once, reused after a round trip, closed after [`SESSION_IDLE`] unused. A checked-out
//! session ([`Lease`]) caches the directories it made and cleaned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;

use super::names::{TempNames, child};
use super::outcome::{Failure, closed};
use super::transport::Transport;
use crate::api::ftp::OnExisting;
use crate::endpoint::FtpEndpoint;
use crate::ssrf::TargetGuard;

/// An unused pooled session is closed after this; servers drop idle ones at 60-300 s.
pub const SESSION_IDLE: Duration = Duration::from_secs(60);
/// A pooled session must answer a round trip within this before it is reused; a dead one is
/// replaced by a new connection rather than waited on for the whole command timeout.
const NOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Held while a session is open, when replicas share the limit (see [`SessionSlots`]).
pub type SlotGuard = Box<dyn Send + Sync>;

/// The `maxConnections` of a pool over every replica: before it opens a session, a replica
/// takes one of the pool's `max` slots, and holds it for as long as the session is open (in
/// use or idle), so a server sees at most `max` sessions of the pool from all replicas
/// together. Without one, the limit holds per process.
pub trait SessionSlots: Send + Sync {
    /// One of `max` slots of `pool` (waits while all are held elsewhere).
    fn take(
        &self,
        pool: String,
        max: usize,
    ) -> futures::future::BoxFuture<'_, Result<SlotGuard, String>>;
}

/// The pools of one transport.
pub(super) struct Pools<T: Transport> {
    pools: Mutex<HashMap<PoolKey, Arc<Pool<T>>>>,
    /// Slots shared with other replicas, when set.
    pub(super) slots: std::sync::OnceLock<Arc<dyn SessionSlots>>,
    opened: AtomicU64,
    /// Sessions alive now (each decrements it when it drops), for metrics.
    open: Arc<AtomicI64>,
}

impl<T: Transport> Default for Pools<T> {
    fn default() -> Self {
        Pools {
            pools: Mutex::new(HashMap::new()),
            slots: std::sync::OnceLock::new(),
            opened: AtomicU64::new(0),
            open: Arc::new(AtomicI64::new(0)),
        }
    }
}

impl<T: Transport> Pools<T> {
    /// Sessions opened so far (logins).
    pub(super) fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Sessions open now, in use or idle.
    pub(super) fn open(&self) -> i64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Sessions waiting for reuse.
    pub(super) fn idle(&self) -> usize {
        let pools = lock(&self.pools);
        pools.values().map(|p| lock(&p.idle).len()).sum()
    }

    fn pool(&self, ep: &FtpEndpoint, max_connections: u32) -> Arc<Pool<T>> {
        let max = max_connections.max(1) as usize;
        let key = PoolKey::of(ep, max);
        lock(&self.pools)
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    permits: Arc::new(Semaphore::new(max)),
                    max,
                    idle: Mutex::new(Vec::new()),
                })
            })
            .clone()
    }

    /// A logged-in session for the endpoint: an idle pooled one that answers a round trip,
    /// or a new one, once fewer than `max_connections` are in use.
    pub(super) async fn checkout(
        &self,
        ep: &FtpEndpoint,
        max_connections: u32,
        guard: &TargetGuard,
        idle_for: Duration,
    ) -> Result<Lease<T>, Failure> {
        let pool = self.pool(ep, max_connections);
        let permit =
            pool.permits.clone().acquire_owned().await.map_err(|_| {
                Failure::retry("Shutdown", "the session pool is closed".to_string())
            })?;
        loop {
            let idle = lock(&pool.idle).pop();
            let Some(idle) = idle else { break };
            if idle.since.elapsed() >= idle_for {
                tokio::spawn(quit_all(vec![idle.conn]));
                continue;
            }
            let mut conn = idle.conn;
            match timeout(NOOP_TIMEOUT, conn.session.noop()).await {
                Ok(Ok(())) => return Ok(Lease::new(pool, conn, permit)),
                Ok(Err(e)) => {
                    tracing::debug!(server = %ep.target(), error = %e, "pooled session is dead");
                }
                Err(_) => {
                    tracing::debug!(server = %ep.target(), "pooled session did not answer");
                }
            }
        }
        let slot = match self.slots.get() {
            Some(slots) => {
                let digest = ep.fingerprint();
                let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
                Some(slots.take(name, pool.max).await.map_err(|e| {
                    Failure::retry(
                        "SessionSlots",
                        format!("the replicas' shared session limit cannot be checked: {e}"),
                    )
                })?)
            }
            None => None,
        };
        let session = T::connect(ep, guard).await?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let mut conn = Conn::new(session, OpenSession::new(&self.open));
        conn._slot = slot;
        Ok(Lease::new(pool, conn, permit))
    }

    /// Takes the idle sessions that `expired` selects, and forgets pools that are unused.
    pub(super) fn take_idle(&self, expired: impl Fn(&Idle<T>) -> bool) -> Vec<Conn<T>> {
        let mut out = Vec::new();
        let mut pools = lock(&self.pools);
        pools.retain(|_, pool| {
            let mut idle = lock(&pool.idle);
            let (gone, keep): (Vec<Idle<T>>, Vec<Idle<T>>) = idle.drain(..).partition(&expired);
            *idle = keep;
            out.extend(gone.into_iter().map(|i| i.conn));
            // Only the map holds it (checkouts clone it under this lock) and no session is
            // out: dropping it loses nothing, and a later checkout makes a fresh one.
            !(idle.is_empty()
                && Arc::strong_count(pool) == 1
                && pool.permits.available_permits() == pool.max)
        });
        out
    }
}

/// Politeness only: a session's socket closes when it drops anyway.
pub(super) async fn quit_all<T: Transport>(conns: Vec<Conn<T>>) {
    futures::future::join_all(conns.into_iter().map(|c| async move {
        let _ = timeout(NOOP_TIMEOUT, c.session.quit()).await;
    }))
    .await;
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing here is left half-updated by a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sessions of one endpoint. Different settings (or a rotated password) make another pool,
/// so a session never outlives the configuration it was opened with.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    digest: [u8; 32],
    max: usize,
}

impl PoolKey {
    fn of(ep: &FtpEndpoint, max: usize) -> Self {
        PoolKey {
            digest: ep.fingerprint(),
            max,
        }
    }
}

struct Pool<T> {
    permits: Arc<Semaphore>,
    max: usize,
    idle: Mutex<Vec<Idle<T>>>,
}

pub(super) struct Idle<T> {
    conn: Conn<T>,
    pub(super) since: std::time::Instant,
}

/// A session and the directories known to exist on it (so each is made once).
pub(super) struct Conn<T> {
    session: T,
    dirs: HashSet<String>,
    /// Directories whose stale temporaries this session has deleted.
    cleaned: HashSet<String>,
    _open: OpenSession,
    /// The shared slot this session holds, released when it closes.
    _slot: Option<SlotGuard>,
}

impl<T> Conn<T> {
    fn new(session: T, open: OpenSession) -> Self {
        Conn {
            session,
            dirs: HashSet::new(),
            cleaned: HashSet::new(),
            _open: open,
            _slot: None,
        }
    }
}

/// Counts a session open while it lives, however it ends (quit, dropped, failed).
struct OpenSession(Arc<AtomicI64>);

impl OpenSession {
    fn new(open: &Arc<AtomicI64>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenSession(open.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What [`Lease::ensure_dir`] knew of a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DirState {
    /// Known from this session's cache (it may have been removed since).
    Cached,
    /// Created just now: it is empty.
    Created,
    /// Existed before (the server refused to make it), or the login directory.
    Existing,
}

/// A checked-out session. Returned to the pool on drop unless a command failed in a way
/// that leaves the connection unusable, or was cancelled half-way.
pub(super) struct Lease<T: Transport> {
    pool: Arc<Pool<T>>,
    conn: Option<Conn<T>>,
    target: String,
    _permit: OwnedSemaphorePermit,
}

impl<T: Transport> Drop for Lease<T> {
    fn drop(&mut self) {
        // Before the permit is released, so a waiter finds the session.
        if let Some(conn) = self.conn.take()
            && conn.session.usable()
        {
            lock(&self.pool.idle).push(Idle {
                conn,
                since: std::time::Instant::now(),
            });
        }
    }
}

impl<T: Transport> Lease<T> {
    fn new(pool: Arc<Pool<T>>, conn: Conn<T>, permit: OwnedSemaphorePermit) -> Self {
        Lease {
            target: conn.session.target().to_string(),
            pool,
            conn: Some(conn),
            _permit: permit,
        }
    }

    pub(super) fn target(&self) -> &str {
        &self.target
    }

    fn conn(&mut self) -> Result<&mut Conn<T>, Failure> {
        let target = &self.target;
        self.conn.as_mut().ok_or_else(|| closed(target))
    }

    fn session(&mut self) -> Result<&mut T, Failure> {
        Ok(&mut self.conn()?.session)
    }

    /// Whether the session still works after a failure.
    pub(super) fn usable(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.session.usable())
    }

    /// Opens `path` for writing. A directory known from this session's cache may have been
    /// removed since: on a refusal that a missing directory explains, it is created again and
    /// the open repeated once.
    pub(super) async fn open_store(
        &mut self,
        dir: &str,
        cached: bool,
        path: &str,
    ) -> Result<T::Upload, Failure> {
        match self.session()?.open_write(path).await {
            Ok(t) => Ok(t),
            Err(e) if cached && e.maybe_missing_dir => {
                self.conn()?.dirs.clear();
                self.ensure_dir(dir).await?;
                self.session()?
                    .open_write(path)
                    .await
                    .map_err(|e| e.failure)
            }
            Err(e) => Err(e.failure),
        }
    }

    pub(super) async fn write(&mut self, t: &mut T::Upload, data: &[u8]) -> Result<(), Failure> {
        self.session()?.write(t, data).await
    }

    pub(super) async fn close_store(&mut self, t: T::Upload) -> Result<(), Failure> {
        self.session()?.close_write(t).await
    }

    pub(super) async fn exists(&mut self, path: &str) -> Result<bool, Failure> {
        self.session()?.exists(path).await
    }

    pub(super) async fn remove(&mut self, path: &str) -> Result<bool, Failure> {
        self.session()?.remove(path).await
    }

    pub(super) async fn remove_dir(&mut self, dir: &str) -> Result<(), Failure> {
        self.session()?.remove_dir(dir).await
    }

    /// Renames a stored temporary to its final name, replacing an existing file only with
    /// `onExisting: overwrite` (the other settings checked for existing files before).
    pub(super) async fn rename_into_place(
        &mut self,
        temp: &str,
        path: &str,
        on_existing: OnExisting,
    ) -> Result<(), Failure> {
        let overwrite = on_existing == OnExisting::Overwrite;
        self.session()?.rename(temp, path, overwrite).await
    }

    /// Creates `dir` and its parents unless known to exist. Refusals are ignored: the usual
    /// one is "exists", and any other problem shows in the write that follows.
    pub(super) async fn ensure_dir(&mut self, dir: &str) -> Result<DirState, Failure> {
        if dir.is_empty() || dir == "/" {
            return Ok(DirState::Existing);
        }
        if self.conn()?.dirs.contains(dir) {
            return Ok(DirState::Cached);
        }
        let mut prefixes = Vec::new();
        for (i, c) in dir.char_indices().skip(1) {
            if c == '/' {
                prefixes.push(&dir[..i]);
            }
        }
        prefixes.push(dir);
        let mut state = DirState::Existing;
        for prefix in prefixes {
            if self.conn()?.dirs.contains(prefix) {
                continue;
            }
            state = if self.session()?.mkdir(prefix).await? {
                DirState::Created
            } else {
                DirState::Existing
            };
            self.conn()?.dirs.insert(prefix.to_string());
        }
        Ok(state)
    }

    /// Deletes the temporaries in `dir` that dead sessions left ([`TempNames::is_leftover`]),
    /// once per session and directory. Best effort: a listing or a DELE that the server
    /// refuses does not stop the upload.
    pub(super) async fn clean_temps(
        &mut self,
        dir: &str,
        known: DirState,
        temps: &TempNames,
    ) -> Result<(), Failure> {
        if known == DirState::Created {
            // Just created: nothing in it.
            self.conn()?.cleaned.insert(dir.to_string());
        }
        if self.conn()?.cleaned.contains(dir) {
            return Ok(());
        }
        let names = match self.session()?.list(dir).await {
            Ok(names) => names,
            Err(e) if self.usable() => {
                tracing::debug!(server = %self.target, dir, error = %e.message, "cannot list for stale temporaries");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let now = Timestamp::now().as_second();
        for name in names.iter().filter(|n| temps.is_leftover(n, now)) {
            let file = child(dir, name);
            match self.remove(&file).await {
                Ok(_) => {
                    tracing::info!(server = %self.target, path = %file, "deleted a temporary left by an earlier session")
                }
                Err(e) if self.usable() => {
                    tracing::debug!(server = %self.target, path = %file, error = %e.message, "cannot delete a stale temporary")
                }
                Err(e) => return Err(e),
            }
        }
        self.conn()?.cleaned.insert(dir.to_string());
        Ok(())
    }

    /// Deletes a temporary after a failure, if the session still works.
    pub(super) async fn discard(&mut self, temp: &str) {
        if self.usable()
            && let Err(e) = self.remove(temp).await
        {
            tracing::debug!(server = %self.target, path = temp, error = %e.message, "could not delete a temporary file");
        }
    }
}
