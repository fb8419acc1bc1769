//! `kubectl vc`: the management API from the terminal (a kubectl plugin: kubectl runs any
//! `kubectl-<name>` on the PATH). Answers "did event X reach target Y, when, and what did they
//! answer" and redoes deliveries, without leaving kubectl.
//!
//! It talks to the operator's HTTP API (`--server`, e.g. after
//! `kubectl -n vehicle-connect port-forward svc/vehicle-connect 8080`) with a manage token;
//! the namespace of a target defaults to the kubeconfig context's, as kubectl's does.

mod args;
mod print;

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

use args::{Cli, Command, Output, TargetArg};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// The operator's API, with the caller's token.
struct Api {
    http: reqwest::Client,
    server: String,
    token: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.server.trim_end_matches('/'));
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.with_context(|| {
            format!("calling {url} (is --server right? is the port-forward running?)")
        })?;
        let status = resp.status();
        let text = resp.text().await.context("reading the answer")?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if !status.is_success() {
            if value.as_str() == Some("") {
                bail!("{status}");
            }
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            let field = value
                .get("field")
                .and_then(Value::as_str)
                .map(|f| format!(" (field {f})"))
                .unwrap_or_default();
            bail!("{status}: {message}{field}");
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let token = cli.token()?;
    let namespace = cli.namespace();
    let api = Api {
        http: reqwest::Client::builder()
            // The system's CAs, for an operator API behind an HTTPS ingress.
            .tls_backend_preconfigured(
                vehicle_connect::delivery::tls_config(&Default::default())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            )
            .timeout(Duration::from_secs(cli.timeout_seconds))
            .build()
            .context("building the HTTP client")?,
        server: cli.server.clone(),
        token,
    };
    let target_path = |t: &TargetArg| t.path(&namespace);
    let out = cli.output;
    match cli.command {
        Command::Deliveries(q) => {
            let mut params = q.params()?;
            if let Some(t) = &q.target {
                params.push(("target", target_path(t)));
            }
            let mut items = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut p = params.clone();
                if let Some(c) = &cursor {
                    p.push(("cursor", c.clone()));
                }
                let page = api.get(&format!("/v1/deliveries?{}", encode(&p))).await?;
                items.extend(
                    page.get("entries")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                );
                cursor = page.get("next").and_then(Value::as_str).map(str::to_string);
                if !q.all || cursor.is_none() {
                    break;
                }
            }
            match out {
                Output::Json => print::json(&Value::Array(items)),
                Output::Table => print::deliveries(&items),
            }
        }
        Command::Event { id, client } => {
            let mut path = format!("/v1/events/{}", urlencode(&id));
            if let Some(c) = client {
                path.push_str(&format!("?client={}", urlencode(&c)));
            }
            let event = api.get(&path).await?;
            match out {
                Output::Json => print::json(&event),
                Output::Table => print::event(&event),
            }
        }
        Command::Targets => {
            let targets = api.get("/v1/targets").await?;
            match out {
                Output::Json => print::json(&targets),
                Output::Table => print::targets(&targets),
            }
        }
        Command::Retry { id } => {
            let answer = api
                .post(
                    &format!("/v1/deliveries/{}/retry", urlencode(&id)),
                    json!({}),
                )
                .await?;
            print::answer(out, &answer, "queued again");
        }
        Command::Redeliver {
            target,
            event,
            client,
        } => {
            let mut body = json!({ "eventId": event });
            if let Some(c) = client {
                body["client"] = Value::String(c);
            }
            let answer = api
                .post(
                    &format!("/v1/targets/{}/redeliver", target_path(&target)),
                    body,
                )
                .await?;
            print::answer(out, &answer, "queued again");
        }
        Command::Replay {
            target,
            since,
            until,
            types,
        } => {
            let mut body = json!({ "since": args::when(&since)? });
            if let Some(u) = until {
                body["until"] = Value::String(args::when(&u)?);
            }
            if !types.is_empty() {
                body["types"] = json!(types);
            }
            let answer = api
                .post(
                    &format!("/v1/targets/{}/replay", target_path(&target)),
                    body,
                )
                .await?;
            print::answer(out, &answer, "replay queued");
        }
        Command::Test { target, r#type } => {
            let mut body = json!({});
            if let Some(t) = r#type {
                body["type"] = Value::String(t);
            }
            let answer = api
                .post(&format!("/v1/targets/{}/test", target_path(&target)), body)
                .await?;
            match out {
                Output::Json => print::json(&answer),
                Output::Table => print::test(&answer),
            }
        }
    }
    Ok(())
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn encode(params: &[(&str, String)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    ser.finish()
}
