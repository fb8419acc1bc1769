//! Reconciler of `FtpConnection`: validate (tenancy, templates, Secrets, target address) →
//! register the resolved target → probe the login (`Connected`) → write status.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::secrets::{SSH_PRIVATE_KEY, SecretReader};
use super::{Context, Error, KindContext, name_ns};
use crate::api::ftp::{FtpConnection, FtpConnectionSpec, FtpProtocol};
use crate::delivery::files::probe;
use crate::endpoint::{FtpEndpoint, SshAuth};
use crate::routing::{FtpTarget, Kind, Target, TargetConfig, TargetKey};
use crate::status::{CONNECTED, Check, READY};

type Guarded = DeserializeGuard<FtpConnection>;

pub fn key(ns: &str, name: &str) -> TargetKey {
    TargetKey {
        kind: Kind::Ftp,
        namespace: ns.into(),
        name: name.into(),
    }
}

/// Runs the controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    super::runner::run::<FtpConnection, _, _>(
        ctx,
        ("ftp", Kind::Ftp),
        super::runner::Reads {
            secrets: |o| {
                secret_names(&o.spec)
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            },
            config_maps: Some(|o| {
                o.spec
                    .ssh
                    .iter()
                    .filter_map(|s| s.known_hosts_config_map_ref.as_ref())
                    .map(|r| r.name.clone())
                    .collect()
            }),
        },
        |o| {
            let (ns, name) = (o.namespace()?, o.name_any());
            Some(provisional(o, &ns, &name))
        },
        reconcile,
    )
    .await;
}

fn secret_names(spec: &FtpConnectionSpec) -> Vec<&str> {
    let mut v = vec![spec.credentials_secret_ref.name.as_str()];
    if let Some(ca) = &spec.ca_secret_ref {
        v.push(ca.name.as_str());
    }
    v
}

async fn reconcile(obj: Arc<Guarded>, ctx: Arc<KindContext>) -> Result<Action, Error> {
    let conn = match &obj.0 {
        Ok(c) => Arc::new(c.clone()),
        Err(invalid) => return super::unreadable::<FtpConnection>(&ctx, invalid, key).await,
    };
    let (_, ns) = name_ns(conn.as_ref())?;
    let api: Api<FtpConnection> = Api::namespaced(ctx.shared.client.clone(), &ns);
    let (name, _) = name_ns(conn.as_ref())?;
    super::without_finalizer(&ctx, conn, key(&ns, &name), |o| {
        let (ctx, api) = (&ctx, &api);
        async move { apply(o, ctx, api).await }
    })
    .await
}

struct Verdict {
    ready: Check,
    connected: Check,
    target: Option<Target>,
    requeue: Option<Duration>,
}

async fn apply(
    c: Arc<FtpConnection>,
    ctx: &KindContext,
    api: &Api<FtpConnection>,
) -> Result<Action, Error> {
    let (name, ns) = name_ns(c.as_ref())?;
    let key = key(&ns, &name);
    let verdict = validate(&c, ctx, &ns, &name).await?;
    let old = c.status.clone().unwrap_or_default();
    super::conclude(
        ctx,
        api,
        c.as_ref(),
        (key, verdict.target),
        super::Observed {
            conditions: &old.conditions,
            generation: old.observed_generation,
            receiver_gone: None,
        },
        (
            &[(READY, &verdict.ready), (CONNECTED, &verdict.connected)],
            None,
        ),
        verdict.requeue,
    )
    .await
}

async fn validate(
    c: &FtpConnection,
    ctx: &KindContext,
    ns: &str,
    name: &str,
) -> Result<Verdict, Error> {
    let spec = &c.spec;
    let not_probed = |why: &str| Check::unknown("NotProbed", format!("no login attempted: {why}"));
    let mk = |held: Option<String>, config: Option<TargetConfig>| Target {
        held,
        config,
        ..provisional(c, ns, name)
    };

    if let Some(check) = ctx.client_refused(ns, &spec.client_id).await? {
        return Ok(Verdict {
            ready: check,
            connected: not_probed("client not allowed"),
            target: None,
            requeue: None,
        });
    }

    let held = |check: Check| Verdict {
        connected: not_probed(&check.reason),
        target: Some(mk(Some(check.reason.clone()), None)),
        ready: check,
        requeue: None,
    };

    if let Err(e) = crate::naming::validate_rules(&spec.rules) {
        return Ok(held(Check::fail("InvalidTemplate", format!("spec.{e}"))));
    }

    let mut secrets = SecretReader::new(ctx, ns);
    let cred = &spec.credentials_secret_ref.name;
    let sftp = spec.protocol == FtpProtocol::Sftp;
    // An SFTP account's name may sit beside its key in a `kubernetes.io/ssh-auth` Secret.
    let username = if sftp {
        secrets
            .ssh_key(cred, "username", "spec.credentialsSecretRef")
            .await?
    } else {
        secrets
            .value(cred, "username", "spec.credentialsSecretRef")
            .await?
    };
    let username = match username {
        Ok(v) => v,
        Err(c) => return Ok(held(c)),
    };
    // SFTP logs in with a private key where the Secret has one, else with the password.
    let private_key = if sftp {
        secrets
            .ssh_key(cred, SSH_PRIVATE_KEY, "spec.credentialsSecretRef")
            .await?
            .ok()
    } else {
        None
    };
    let password = if private_key.is_some() {
        String::new()
    } else {
        match secrets
            .value(cred, "password", "spec.credentialsSecretRef")
            .await?
        {
            Ok(v) => v,
            Err(c) if sftp && c.reason == "SecretInvalid" => {
                return Ok(held(Check::fail(
                    "SecretInvalid",
                    format!(
                        "Secret {cred:?} (spec.credentialsSecretRef) has neither key \"password\" nor \"{SSH_PRIVATE_KEY}\" (or it is empty)"
                    ),
                )));
            }
            Err(c) => return Ok(held(c)),
        }
    };
    let passphrase = match &private_key {
        Some(_) => secrets
            .ssh_key(cred, "passphrase", "spec.credentialsSecretRef")
            .await?
            .ok(),
        None => None,
    };
    let ssh = spec.ssh.as_ref();
    let known_hosts = match (
        ssh.and_then(|s| s.known_hosts_secret_ref.as_ref()),
        ssh.and_then(|s| s.known_hosts_config_map_ref.as_ref()),
    ) {
        (Some(r), _) if sftp => {
            let k = r.key_or("known_hosts");
            let text = match secrets
                .value(&r.name, k, "spec.ssh.knownHostsSecretRef")
                .await?
            {
                Ok(v) => v,
                Err(c) => return Ok(held(c)),
            };
            if let Err(e) = crate::delivery::files::sftp::check_known_hosts(&text) {
                return Ok(held(Check::fail(
                    "SecretInvalid",
                    format!(
                        "key {k:?} of Secret {:?} (spec.ssh.knownHostsSecretRef): {e}",
                        r.name
                    ),
                )));
            }
            Some(text)
        }
        (None, Some(r)) if sftp => {
            let k = r.key_or("known_hosts");
            let field = "spec.ssh.knownHostsConfigMapRef";
            let text = match super::config_map_value(ctx, ns, r, "known_hosts", field).await? {
                Ok(v) => v,
                Err(c) => return Ok(held(c)),
            };
            if let Err(e) = crate::delivery::files::sftp::check_known_hosts(&text) {
                return Ok(held(Check::fail(
                    "ConfigMapInvalid",
                    format!("key {k:?} of ConfigMap {:?} ({field}): {e}", r.name),
                )));
            }
            Some(text)
        }
        _ => None,
    };
    let ca_pem = match &spec.ca_secret_ref {
        Some(r) => match secrets.ca_bundle(r, "spec.caSecretRef").await? {
            Ok(pem) => Some(pem),
            Err(c) => return Ok(held(c)),
        },
        None => None,
    };

    let s = &ctx.shared.settings;
    if let Err(e) = s
        .guard
        .check_host(&spec.host, spec.port(), Duration::from_secs(5))
        .await
    {
        let check = Check::fail(e.reason(), format!("spec.host: {e}"));
        return Ok(match e {
            crate::ssrf::TargetError::Unresolvable { .. } => Verdict {
                connected: Check::fail("DnsFailed", check.message.clone()),
                target: Some(mk(Some(check.reason.clone()), None)),
                ready: check,
                requeue: Some(Duration::from_secs(30)),
            },
            _ => Verdict {
                connected: not_probed("target not allowed"),
                ready: check,
                target: None,
                requeue: Some(s.recheck_interval),
            },
        });
    }

    let endpoint = FtpEndpoint {
        host: spec.host.clone(),
        port: spec.port(),
        protocol: spec.protocol,
        username,
        password,
        ca_pem,
        connect_timeout: Duration::from_secs(spec.timeouts.connect_seconds.into()),
        command_timeout: Duration::from_secs(spec.timeouts.command_seconds.into()),
        passive: spec.passive,
        epsv: spec.epsv,
        nat_workaround: spec.nat_workaround,
        ssh: SshAuth {
            known_hosts,
            private_key,
            passphrase,
        },
    };
    let config = TargetConfig::Ftp(FtpTarget {
        endpoint: endpoint.clone(),
        rules: spec.rules.clone(),
        retry: spec.retry_policy(),
        max_connections: spec.max_connections,
    });
    if spec.suspend {
        return Ok(Verdict {
            // True: what the user asked for, so GitOps tools (kstatus) see it as done.
            ready: Check::ok(
                "Suspended",
                "spec.suspend is true: events are kept and uploaded after resuming",
            ),
            connected: not_probed("suspended"),
            target: Some(mk(Some("Suspended".into()), Some(config))),
            requeue: None,
        });
    }

    let record = ctx
        .shared
        .probes
        .check(
            &endpoint,
            s.probe_interval,
            &ctx.shared.probe_permits,
            &s.guard,
            &ctx.shared.metrics,
        )
        .await;
    let target = Some(mk(None, Some(config)));
    let proto = spec.protocol.as_str();
    Ok(match record.result {
        Ok(()) => Verdict {
            ready: Check::ok(
                "Ready",
                format!(
                    "uploading vehicles of client {:?} to {proto}://{}:{}",
                    spec.client_id, spec.host, endpoint.port
                ),
            ),
            connected: Check::ok(
                "LoggedIn",
                format!(
                    "logged in to {}:{} as {:?}",
                    spec.host, endpoint.port, endpoint.username
                ),
            ),
            target,
            requeue: Some(record.next_in),
        },
        Err((reason, message)) => Verdict {
            ready: Check::fail(
                reason.clone(),
                format!("cannot log in: {message}; uploads are retried"),
            ),
            connected: Check::fail(reason, message),
            target,
            requeue: Some(record.next_in),
        },
    })
}

/// Result of the last login probe of one endpoint.
#[derive(Clone, Debug)]
pub struct ProbeRecord {
    at: Instant,
    /// `Err((reason, message))`.
    pub result: Result<(), (String, String)>,
    failures: u32,
    /// When the endpoint is due to be probed again.
    pub next_in: Duration,
}

/// Login probes shared by every FtpConnection with the same endpoint and credentials, so
/// 400 connections to one server cost one login, and a failing server is probed with
/// backoff (5 s doubling up to the probe interval), never in a tight loop.
#[derive(Default)]
pub struct ProbeCache {
    /// Endpoint fingerprint → its last probe.
    entries: Mutex<HashMap<[u8; 32], ProbeSlot>>,
}

type ProbeSlot = Arc<tokio::sync::Mutex<Option<ProbeRecord>>>;

impl ProbeCache {
    pub async fn check(
        &self,
        ep: &FtpEndpoint,
        interval: Duration,
        permits: &tokio::sync::Semaphore,
        target_guard: &crate::ssrf::TargetGuard,
        metrics: &crate::metrics::Metrics,
    ) -> ProbeRecord {
        let slot = {
            let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            m.entry(ep.fingerprint()).or_default().clone()
        };
        // Concurrent reconciles of the same endpoint wait here and reuse one probe.
        let mut guard = slot.lock().await;
        if let Some(r) = guard.as_ref()
            && r.at.elapsed() < r.next_in
        {
            let mut r = r.clone();
            r.next_in = r
                .next_in
                .saturating_sub(r.at.elapsed())
                .max(Duration::from_secs(1));
            return r;
        }
        let prev_failures = guard.as_ref().map(|r| r.failures).unwrap_or(0);
        let result = {
            let _permit = permits.acquire().await;
            // The probe bounds itself by connect_timeout; this outer bound is a safety net.
            let limit = ep.connect_timeout + ep.command_timeout;
            match tokio::time::timeout(limit, probe(ep, target_guard)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err((
                    "Timeout".to_string(),
                    format!("no answer from {}:{} within {limit:?}", ep.host, ep.port),
                )),
            }
        };
        let counted = match &result {
            Ok(()) => "ok".to_string(),
            Err((reason, _)) => reason.clone(),
        };
        metrics
            .ftp_login_probes
            .get_or_create(&crate::metrics::ProbeResult { result: counted })
            .inc();
        let failures = if result.is_ok() { 0 } else { prev_failures + 1 };
        let next_in = if failures == 0 {
            interval
        } else {
            (Duration::from_secs(5) * 2u32.pow((failures - 1).min(10))).min(interval)
        };
        let rec = ProbeRecord {
            at: Instant::now(),
            result,
            failures,
            next_in,
        };
        *guard = Some(rec.clone());
        rec
    }
}

/// The target as its spec alone describes it, held until the reconciler has resolved it:
/// what start-up registers from the watch cache so that no event misses it meanwhile.
pub fn provisional(c: &FtpConnection, ns: &str, name: &str) -> Target {
    let spec = &c.spec;
    super::provisional_target(
        key(ns, name),
        c,
        super::Selects {
            client_id: &spec.client_id,
            user_ids: spec.user_ids.as_deref(),
            events: &spec.events,
        },
        spec.retry_policy(),
    )
}
