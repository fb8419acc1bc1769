//! Prometheus metrics, served at `/metrics`.
//!
//! Families that alerts and dashboards query are initialised with zeros for every label
//! value known up front, so that a query finds them before the first event (a family is
//! printed with no sample until one of its series is created).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::routing::{Kind, TargetKey};

const KINDS: [Kind; 3] = [Kind::Webhook, Kind::Ftp, Kind::Api];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindResult {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// `error` is empty for `result="ok"`, else the error's label (`kube`, `missing_field`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub kind: &'static str,
    pub result: &'static str,
    pub error: &'static str,
}

/// `part`: `conditions` (a reconciler's `Ready`, `observedGeneration`) or `delivery` (the
/// counters and `Delivering`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusPart {
    pub part: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub kind: &'static str,
    pub condition: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindReason {
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: &'static str,
}

/// A login probe's result: `ok` or the failure's reason (`LoginFailed`, `Timeout`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeResult {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
    pub git_sha: &'static str,
}

/// Results of `deliveries_total` (one per delivery, when it ends).
const OUTCOMES: [&str; 5] = ["delivered", "skipped", "failed", "expired", "dropped"];
/// Results of `delivery_attempts_total` (one per attempt).
const ATTEMPT_RESULTS: [&str; 5] = ["delivered", "skipped", "retry", "failed", "gone"];
/// Every status the ingest API answers `POST /v1/events` with.
const INGEST_CODES: [u16; 10] = [202, 400, 401, 403, 408, 413, 415, 429, 503, 507];
/// The conditions counted by `resources`.
pub const READY: &str = "Ready";
pub const DELIVERING: &str = crate::status::DELIVERING;

/// One attempt: webhook timeoutSeconds goes up to 120 s, ApiConnection requests to 300 s,
/// an FTP command to 600 s.
fn attempt_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        600.0,
    ])
}

/// Acceptance to delivery: seconds when healthy, hours to days (maxAgeSeconds is at most a
/// week) when retrying.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
        10800.0, 21600.0, 43200.0, 86400.0, 259200.0, 604800.0,
    ])
}

/// The last `Ready` and `Delivering` of each resource, as its reconciler and the status
/// writer concluded; summed into gauges at each scrape.
#[derive(Default)]
struct Conditions {
    by_key: HashMap<TargetKey, Seen>,
}

#[derive(Default)]
struct Seen {
    /// (status, reason)
    ready: Option<(String, String)>,
    delivering: Option<String>,
}

type ScrapeHook = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    /// Events posted, by result: accepted, duplicate, rejected, unavailable (requests the
    /// store could not take).
    pub events: Family<ResultLabel, Counter>,
    /// `POST /v1/events` answers by HTTP status code.
    pub ingest_requests: Family<CodeLabel, Counter>,
    /// Deliveries ended, by kind and outcome (delivered, skipped, failed, expired, dropped).
    pub deliveries: Family<KindResult, Counter>,
    /// Delivery attempts by kind and result (delivered, skipped, retry, failed, gone).
    pub delivery_attempts: Family<KindResult, Counter>,
    /// Duration of one delivery attempt.
    pub attempt_seconds: Family<KindLabel, Histogram>,
    /// Time from acceptance to successful delivery.
    pub delivery_latency_seconds: Family<KindLabel, Histogram>,
    /// Deliveries waiting (new or retrying).
    pub queue_depth: Gauge,
    /// Reconciles by kind and result (ok, error) and the error's label.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Status patches this process sent, by part. With replicas, one of them writes each
    /// resource's status: the others' counts stay still for it.
    pub status_writes: Family<StatusPart, Counter>,
    /// Delivery log entries copied to JetStream (`--store nats://…`).
    pub delivery_log_copied: Counter,
    /// 0 healthy, 1 degraded (writes fail, e.g. disk full), 2 failed (cannot reopen the file).
    pub store_state: Gauge,
    store_commits: Counter,
    store_failed_commits: Counter,
    /// Feed reads (`GET /v1/events`) by result: ok, unauthorized, forbidden, invalid, busy,
    /// unavailable.
    pub feed_requests: Family<ResultLabel, Counter>,
    /// Events returned by feed reads.
    pub feed_events: Counter,
    /// Feed long-polls waiting now.
    pub feed_waiting: Gauge,
    /// FTP/SFTP sessions open (in use or idle in the pools), by protocol.
    pub file_sessions_open: Family<ProtocolLabel, Gauge>,
    /// FTP/SFTP login probes of FtpConnections, by result.
    pub ftp_login_probes: Family<ProbeResult, Counter>,
    resources: Family<ConditionLabels, Gauge>,
    resources_not_ready: Family<KindReason, Gauge>,
    conditions: Mutex<Conditions>,
    /// Run before each encode, for figures read rather than counted (FTP sessions).
    on_scrape: Mutex<Vec<ScrapeHook>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        // Unprefixed, under the names every Prometheus client library uses.
        root.register_collector(Box::new(process::Collector));
        let registry = root.sub_registry_with_prefix("vehicle_connect");
        let m = Metrics {
            registry: Registry::default(),
            events: Family::default(),
            ingest_requests: Family::default(),
            deliveries: Family::default(),
            delivery_attempts: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_histogram as fn() -> Histogram),
            delivery_latency_seconds: Family::new_with_constructor(
                latency_histogram as fn() -> Histogram,
            ),
            queue_depth: Gauge::default(),
            reconciles: Family::default(),
            status_writes: Family::default(),
            delivery_log_copied: Counter::default(),
            store_state: Gauge::default(),
            store_commits: Counter::default(),
            store_failed_commits: Counter::default(),
            feed_requests: Family::default(),
            feed_events: Counter::default(),
            feed_waiting: Gauge::default(),
            file_sessions_open: Family::default(),
            ftp_login_probes: Family::default(),
            resources: Family::default(),
            resources_not_ready: Family::default(),
            conditions: Mutex::new(Conditions::default()),
            on_scrape: Mutex::new(Vec::new()),
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                // Set by the image build (`--build-arg GIT_SHA`); never fetched.
                git_sha: option_env!("VC_GIT_SHA").unwrap_or(""),
            })
            .set(1);
        registry.register(
            "build_info",
            "Version of the running operator (always 1)",
            build,
        );
        registry.register(
            "events",
            "Events posted to the ingest API, by result",
            m.events.clone(),
        );
        registry.register(
            "ingest_requests",
            "POST /v1/events answers, by HTTP status code",
            m.ingest_requests.clone(),
        );
        registry.register(
            "deliveries",
            "Deliveries ended, by kind and outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "delivery_attempts",
            "Delivery attempts, by kind and result",
            m.delivery_attempts.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Duration of one delivery attempt",
            m.attempt_seconds.clone(),
        );
        registry.register(
            "delivery_latency_seconds",
            "Time from acceptance to successful delivery",
            m.delivery_latency_seconds.clone(),
        );
        registry.register(
            "queue_depth",
            "Deliveries waiting (new or retrying)",
            m.queue_depth.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by kind, result (ok, error) and error",
            m.reconciles.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches sent by this process, by part (conditions, delivery)",
            m.status_writes.clone(),
        );
        registry.register(
            "delivery_log_copied",
            "Delivery log entries copied to the JetStream stream VC_ATTEMPTS (several replicas only)",
            m.delivery_log_copied.clone(),
        );
        registry.register(
            "store_state",
            "Store state: 0 healthy, 1 degraded (writes fail, e.g. disk full), 2 failed (cannot reopen its file)",
            m.store_state.clone(),
        );
        registry.register(
            "store_commits",
            "Store write transactions committed",
            m.store_commits.clone(),
        );
        registry.register(
            "store_failed_commits",
            "Store write transactions that failed (their requests are retried alone)",
            m.store_failed_commits.clone(),
        );
        registry.register(
            "feed_requests",
            "Feed reads (GET /v1/events), by result",
            m.feed_requests.clone(),
        );
        registry.register(
            "feed_events",
            "Events returned by feed reads",
            m.feed_events.clone(),
        );
        registry.register(
            "feed_waiting",
            "Feed long-polls waiting for an event now",
            m.feed_waiting.clone(),
        );
        registry.register(
            "file_sessions_open",
            "FTP and SFTP sessions open (in use or idle), by protocol",
            m.file_sessions_open.clone(),
        );
        registry.register(
            "ftp_login_probes",
            "Login probes of FtpConnections, by result (ok or the failure's reason)",
            m.ftp_login_probes.clone(),
        );
        registry.register(
            "resources",
            "Resources by kind, condition (Ready, Delivering) and its status",
            m.resources.clone(),
        );
        registry.register(
            "resources_not_ready",
            "Resources whose Ready condition is not True, by kind and reason",
            m.resources_not_ready.clone(),
        );
        let m = Metrics {
            registry: root,
            ..m
        };
        m.initialise();
        m
    }

    /// Zeros for the series queried before anything happened.
    fn initialise(&self) {
        for kind in KINDS.map(Kind::label) {
            for result in OUTCOMES {
                let _ = self.deliveries.get_or_create(&KindResult { kind, result });
            }
            for result in ATTEMPT_RESULTS {
                let _ = self
                    .delivery_attempts
                    .get_or_create(&KindResult { kind, result });
            }
            let _ = self.attempt_seconds.get_or_create(&KindLabel { kind });
            let _ = self
                .delivery_latency_seconds
                .get_or_create(&KindLabel { kind });
            let _ = self.reconciles.get_or_create(&ReconcileLabels {
                kind,
                result: "ok",
                error: "",
            });
        }
        for result in ["accepted", "duplicate", "rejected", "unavailable"] {
            let _ = self.events.get_or_create(&ResultLabel { result });
        }
        for result in [
            "ok",
            "unauthorized",
            "forbidden",
            "invalid",
            "busy",
            "unavailable",
        ] {
            let _ = self.feed_requests.get_or_create(&ResultLabel { result });
        }
        for code in INGEST_CODES {
            let _ = self.ingest_requests.get_or_create(&CodeLabel { code });
        }
        for protocol in ["ftp", "sftp"] {
            let _ = self
                .file_sessions_open
                .get_or_create(&ProtocolLabel { protocol });
        }
        for part in ["conditions", "delivery"] {
            let _ = self.status_writes.get_or_create(&StatusPart { part });
        }
        let _ = self.ftp_login_probes.get_or_create(&ProbeResult {
            result: "ok".into(),
        });
        self.count_conditions(&Conditions::default());
    }

    /// Counts a reconcile's end.
    pub fn reconciled(&self, kind: &'static str, error: Option<&'static str>) {
        let labels = match error {
            None => ReconcileLabels {
                kind,
                result: "ok",
                error: "",
            },
            Some(error) => ReconcileLabels {
                kind,
                result: "error",
                error,
            },
        };
        self.reconciles.get_or_create(&labels).inc();
    }

    /// This process sent a status patch of `part` (`conditions` or `delivery`).
    pub fn status_written(&self, part: &'static str) {
        self.status_writes.get_or_create(&StatusPart { part }).inc();
    }

    /// A reconciler concluded `key`'s `Ready` condition.
    pub fn ready(&self, key: &TargetKey, status: &str, reason: &str) {
        let mut c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        c.by_key.entry(key.clone()).or_default().ready = Some((status.into(), reason.into()));
    }

    /// The status writer wrote `key`'s `Delivering` condition.
    pub fn delivering(&self, key: &TargetKey, status: &str) {
        let mut c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        // Only for resources a reconciler has seen: a write racing a deletion adds nothing.
        if let Some(seen) = c.by_key.get_mut(key) {
            seen.delivering = Some(status.into());
        }
    }

    /// `key` was deleted (or is no longer served): it counts in no gauge any more.
    pub fn forget(&self, key: &TargetKey) {
        let mut c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
        c.by_key.remove(key);
    }

    /// Store figures, read at each scrape; its counters count since the store was opened.
    pub fn store(&self, health_level: i64, stats: crate::store::StoreStats) {
        self.store_state.set(health_level);
        catch_up(&self.store_commits, stats.commits);
        catch_up(&self.store_failed_commits, stats.failed_commits);
    }

    /// Runs `f` before each encode.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        self.on_scrape
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }

    fn count_conditions(&self, c: &Conditions) {
        self.resources.clear();
        self.resources_not_ready.clear();
        for kind in KINDS.map(Kind::label) {
            // An empty family is not printed at all; this zero keeps it visible.
            let _ = self.resources_not_ready.get_or_create(&KindReason {
                kind,
                reason: String::new(),
            });
            for condition in [READY, DELIVERING] {
                for status in ["True", "False", "Unknown"] {
                    let _ = self.resources.get_or_create(&ConditionLabels {
                        kind,
                        condition,
                        status: status.into(),
                    });
                }
            }
        }
        for (key, seen) in &c.by_key {
            let kind = key.kind.label();
            let conditions = [
                seen.ready.as_ref().map(|(s, _)| (READY, s)),
                seen.delivering.as_ref().map(|s| (DELIVERING, s)),
            ];
            for (condition, status) in conditions.into_iter().flatten() {
                self.resources
                    .get_or_create(&ConditionLabels {
                        kind,
                        condition,
                        status: status.clone(),
                    })
                    .inc();
            }
            if let Some((status, reason)) = &seen.ready
                && status != "True"
            {
                self.resources_not_ready
                    .get_or_create(&KindReason {
                        kind,
                        reason: reason.clone(),
                    })
                    .inc();
            }
        }
    }

    /// Text exposition format.
    pub fn encode(&self) -> String {
        // Held over the refresh and the encode, so concurrent scrapes see whole gauges.
        let hooks = self.on_scrape.lock().unwrap_or_else(|e| e.into_inner());
        for f in hooks.iter() {
            f(self);
        }
        {
            let c = self.conditions.lock().unwrap_or_else(|e| e.into_inner());
            self.count_conditions(&c);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        drop(hooks);
        out
    }
}

/// Raises `counter` to `total` (a count kept elsewhere); only the scrape, under its lock,
/// calls this.
fn catch_up(counter: &Counter, total: u64) {
    let seen = counter.get();
    if total > seen {
        counter.inc_by(total - seen);
    }
}

/// `process_*` metrics of this process, read from `/proc/self` at each scrape (Linux only).
mod process {
    use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;

    #[derive(Debug)]
    pub struct Collector;

    fn gauge(
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        value: f64,
    ) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new(value);
        let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(m)
    }

    impl prometheus_client::collector::Collector for Collector {
        #[cfg(target_os = "linux")]
        fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let Ok(me) = procfs::process::Process::myself() else {
                return Ok(());
            };
            if let Ok(stat) = me.stat() {
                let ticks = procfs::ticks_per_second() as f64;
                let cpu = ConstCounter::new((stat.utime + stat.stime) as f64 / ticks);
                let m = encoder.encode_descriptor(
                    "process_cpu_seconds",
                    "User and system CPU time spent, in seconds",
                    None,
                    cpu.metric_type(),
                )?;
                cpu.encode(m)?;
                let rss = stat.rss.saturating_mul(procfs::page_size()) as f64;
                gauge(
                    &mut encoder,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes",
                    rss,
                )?;
                if let Ok(boot) = procfs::boot_time_secs() {
                    let start = boot as f64 + stat.starttime as f64 / ticks;
                    gauge(
                        &mut encoder,
                        "process_start_time_seconds",
                        "Start time of the process since the Unix epoch, in seconds",
                        start,
                    )?;
                }
            }
            if let Ok(fds) = me.fd_count() {
                gauge(
                    &mut encoder,
                    "process_open_fds",
                    "Open file descriptors",
                    fds as f64,
                )?;
            }
            Ok(())
        }

        #[cfg(not(target_os = "linux"))]
        fn encode(&self, _encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> TargetKey {
        TargetKey {
            kind: Kind::Webhook,
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn initialised_families_have_samples_before_anything_happens() {
        let text = Metrics::new().encode();
        for line in [
            "vehicle_connect_build_info{version=\"",
            "vehicle_connect_deliveries_total{kind=\"ftp\",result=\"expired\"} 0",
            "vehicle_connect_delivery_attempts_total{kind=\"api\",result=\"retry\"} 0",
            "vehicle_connect_reconciles_total{kind=\"webhook\",result=\"ok\",error=\"\"} 0",
            "vehicle_connect_ingest_requests_total{code=\"503\"} 0",
            "vehicle_connect_resources{kind=\"ftp\",condition=\"Delivering\",status=\"False\"} 0",
            "vehicle_connect_file_sessions_open{protocol=\"sftp\"} 0",
            "vehicle_connect_resources_not_ready{kind=\"api\",reason=\"\"} 0",
            "vehicle_connect_feed_requests_total{result=\"busy\"} 0",
            "vehicle_connect_ftp_login_probes_total{result=\"ok\"} 0",
            "vehicle_connect_store_failed_commits_total 0",
            "vehicle_connect_attempt_duration_seconds_bucket{le=\"600.0\",kind=\"webhook\"} 0",
            "vehicle_connect_delivery_latency_seconds_bucket{le=\"604800.0\",kind=\"api\"} 0",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "no {name} in:\n{text}"
            );
        }
    }

    #[test]
    fn condition_gauges_follow_conclusions_and_deletions() {
        let m = Metrics::new();
        m.ready(&key("a"), "False", "SecretNotFound");
        m.ready(&key("b"), "False", "SecretNotFound");
        m.ready(&key("c"), "True", "Ready");
        m.delivering(&key("c"), "False");
        // Never reconciled (or deleted already): not counted.
        m.delivering(&key("z"), "True");
        let text = m.encode();
        for line in [
            "vehicle_connect_resources_not_ready{kind=\"webhook\",reason=\"SecretNotFound\"} 2",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Ready\",status=\"False\"} 2",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Ready\",status=\"True\"} 1",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Delivering\",status=\"False\"} 1",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Delivering\",status=\"True\"} 0",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
        m.forget(&key("a"));
        m.forget(&key("b"));
        m.ready(&key("c"), "False", "ClientNotAllowed");
        let text = m.encode();
        assert!(
            !text.contains("reason=\"SecretNotFound\""),
            "deleted resources still counted:\n{text}"
        );
        for line in [
            "vehicle_connect_resources_not_ready{kind=\"webhook\",reason=\"ClientNotAllowed\"} 1",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Ready\",status=\"False\"} 1",
            "vehicle_connect_resources{kind=\"webhook\",condition=\"Ready\",status=\"True\"} 0",
        ] {
            assert!(text.contains(line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn store_counters_catch_up_with_the_stores() {
        let m = Metrics::new();
        let stats = |failed| crate::store::StoreStats {
            commits: 10,
            failed_commits: failed,
            ..Default::default()
        };
        m.store(1, stats(3));
        m.store(1, stats(5));
        let text = m.encode();
        assert!(
            text.contains("vehicle_connect_store_failed_commits_total 5\n"),
            "{text}"
        );
        assert!(
            text.contains("vehicle_connect_store_commits_total 10\n"),
            "{text}"
        );
        assert!(text.contains("vehicle_connect_store_state 1\n"), "{text}");
    }
}
