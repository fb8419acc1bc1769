//! Command line of `kubectl vc`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

#[derive(Parser)]
#[command(
    name = "kubectl-vc",
    about = "vehicle-connect's delivery log, retries, replays and test sends (kubectl vc ...)",
    after_help = "Reach the operator first, e.g.:\n  kubectl -n vehicle-connect port-forward svc/vehicle-connect 8080\n  export VC_TOKEN=<a manage token>"
)]
pub struct Cli {
    /// The operator's HTTP API.
    #[arg(
        long,
        env = "VC_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// A manage token (`--manage-token-file` of the operator).
    #[arg(long, env = "VC_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the manage token (its first line).
    #[arg(long, env = "VC_TOKEN_FILE", global = true, conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Namespace of the target (default: the kubeconfig context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// Seconds to wait for the operator's answer (a test send waits for the receiver).
    #[arg(long, default_value_t = 60, global = true)]
    pub timeout_seconds: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// The delivery log, newest first: `kubectl vc deliveries whs/crm --status failed`.
    Deliveries(DeliveryQuery),
    /// One event and its attempts per target.
    Event {
        id: String,
        /// The event's client (needed when the token sees several clients).
        #[arg(long)]
        client: Option<String>,
    },
    /// The targets the token sees, with their health.
    Targets,
    /// Delivers a delivery log entry's event to its target again.
    Retry {
        /// The entry's id (`kubectl vc deliveries` shows it).
        id: String,
    },
    /// Delivers one stored event to a target again.
    Redeliver {
        target: TargetArg,
        #[arg(long)]
        event: String,
        #[arg(long)]
        client: Option<String>,
    },
    /// Delivers every stored event of a time window that the target takes, again.
    Replay {
        target: TargetArg,
        /// Start: RFC 3339, or an age such as `2h`, `30m`, `7d`.
        #[arg(long)]
        since: String,
        /// End (default: now): RFC 3339 or an age.
        #[arg(long)]
        until: Option<String>,
        /// Only these event types (comma separated).
        #[arg(long, value_delimiter = ',')]
        types: Vec<String>,
    },
    /// Sends a sample event now and shows the receiver's answer.
    Test {
        target: TargetArg,
        /// The sample's type (default `vehicle.processed`).
        #[arg(long = "type")]
        r#type: Option<String>,
    },
}

#[derive(clap::Args)]
pub struct DeliveryQuery {
    /// Only this target (`whs/NAME`, `ftpc/NAME`, `apic/NAME`).
    pub target: Option<TargetArg>,
    /// `failed` (retried, given up, gone, expired), `delivered`, or one result.
    #[arg(long)]
    pub status: Option<String>,
    /// A vehicle by its id or its VIN.
    #[arg(long)]
    pub vehicle: Option<String>,
    /// An event type.
    #[arg(long = "type")]
    pub r#type: Option<String>,
    /// One event id.
    #[arg(long)]
    pub event: Option<String>,
    #[arg(long)]
    pub client: Option<String>,
    /// RFC 3339, or an age such as `2h`.
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long)]
    pub until: Option<String>,
    /// Entries per page (the API allows at most 500).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Follow the pages to the end.
    #[arg(long)]
    pub all: bool,
}

impl DeliveryQuery {
    pub fn params(&self) -> anyhow::Result<Vec<(&'static str, String)>> {
        let mut p = vec![("limit", self.limit.to_string())];
        let plain = [
            ("status", &self.status),
            ("vehicle", &self.vehicle),
            ("type", &self.r#type),
            ("event", &self.event),
            ("client", &self.client),
        ];
        for (k, v) in plain {
            if let Some(v) = v {
                p.push((k, v.clone()));
            }
        }
        for (k, v) in [("since", &self.since), ("until", &self.until)] {
            if let Some(v) = v {
                p.push((k, when(v)?));
            }
        }
        Ok(p)
    }
}

/// A target as kubectl names resources: `whs/NAME`, `webhooksubscription/NAME`, ...
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetArg {
    kind: &'static str,
    name: String,
}

impl std::str::FromStr for TargetArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: write the target as KIND/NAME, e.g. whs/crm"))?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "whs" | "webhooksubscription" | "webhooksubscriptions" => "webhooksubscription",
            "ftpc" | "ftpconnection" | "ftpconnections" => "ftpconnection",
            "apic" | "apiconnection" | "apiconnections" => "apiconnection",
            other => return Err(format!("{other:?} is not a kind: whs, ftpc or apic")),
        };
        if name.is_empty() || name.contains('/') {
            return Err(format!(
                "{s:?}: write the target as KIND/NAME, e.g. whs/crm"
            ));
        }
        Ok(TargetArg {
            kind,
            name: name.to_string(),
        })
    }
}

impl TargetArg {
    /// `{kind}/{namespace}/{name}`, as the API's paths and `target=` take it.
    pub fn path(&self, namespace: &str) -> String {
        format!("{}/{namespace}/{}", self.kind, self.name)
    }
}

impl Cli {
    pub fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.trim().to_string());
        }
        if let Some(f) = &self.token_file {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?;
            if let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
                return Ok(line.to_string());
            }
            bail!("the token file {} is empty", f.display());
        }
        bail!("no token: pass --token, VC_TOKEN or --token-file (a manage token of the operator)")
    }

    pub fn namespace(&self) -> String {
        if let Some(n) = &self.namespace {
            return n.clone();
        }
        kube::config::Kubeconfig::read()
            .ok()
            .and_then(|k| {
                let current = k.current_context?;
                k.contexts
                    .into_iter()
                    .find(|c| c.name == current)?
                    .context?
                    .namespace
            })
            .unwrap_or_else(|| "default".to_string())
    }
}

/// A time the API takes (RFC 3339) from RFC 3339 or an age before now (`90s`, `30m`, `2h`, `7d`).
pub fn when(s: &str) -> anyhow::Result<String> {
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t.to_string());
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = n
        .parse()
        .with_context(|| format!("{s:?} is neither RFC 3339 nor an age like 2h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("{s:?}: an age ends in s, m, h or d"),
    };
    Ok((Timestamp::now() - SignedDuration::from_secs(secs)).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_as_kubectl_names_them() {
        let t: TargetArg = "whs/crm".parse().unwrap();
        assert_eq!(t.path("dealer-1"), "webhooksubscription/dealer-1/crm");
        let t: TargetArg = "FtpConnections/dms".parse().unwrap();
        assert_eq!(t.path("d"), "ftpconnection/d/dms");
        assert!("crm".parse::<TargetArg>().is_err());
        assert!("pod/x".parse::<TargetArg>().is_err());
        assert!("whs/".parse::<TargetArg>().is_err());
        assert!("whs/a/b".parse::<TargetArg>().is_err());
    }

    #[test]
    fn times_and_ages() {
        assert_eq!(
            when("2026-12-03T10:00:00Z").unwrap(),
            "2026-12-03T10:00:00Z"
        );
        let two_h: Timestamp = when("2h").unwrap().parse().unwrap();
        let age = Timestamp::now().duration_since(two_h);
        assert!((age.as_secs() - 7200).abs() < 5, "{age:?}");
        assert!(when("2w").is_err());
        assert!(when("yesterday").is_err());
    }
}
