//! AutoDMS, a made-up dealer-management-system REST API, as the peer of `ApiConnection` tests:
//! `tests/peers/dms/server.py` on 127.0.0.1, which checks every request against its OpenAPI
//! document (`tests/peers/dms/openapi.yaml`) with openapi-core, a validator independent of our
//! code, and records what it got. Python and its packages come from the venv that
//! `scripts/dms-venv.sh` makes once (pinned versions, from PyPI); see
//! `tests/peers/dms/README.md` for the API, the admin endpoints and what openapi-core checks.
//!
//! Standalone (`#[path]`-includable): uses only crates of Cargo.toml.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long the server may take to listen (Python starts, openapi-core reads the document).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The repository's root.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where the OpenAPI document of the DMS is.
pub fn openapi_yaml_path() -> PathBuf {
    root().join("tests/peers/dms/openapi.yaml")
}

/// The OpenAPI document of the DMS, as an `ApiConnection` would be given it.
pub fn openapi_yaml() -> String {
    let path = openapi_yaml_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The venv's python, made by `scripts/dms-venv.sh` once per process; an error (no Python, no
/// PyPI) is kept and repeated to every caller. The OpenAPI checker
/// (`tests/peers/openapi/check.py`) runs in it too.
pub fn venv_python() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let script = root().join("scripts/dms-venv.sh");
            let out = Command::new(&script)
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("run {}: {e}", script.display()))?;
            let stderr = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                return Err(format!(
                    "scripts/dms-venv.sh failed ({}), so the AutoDMS peer cannot run: {}",
                    out.status,
                    stderr.trim()
                ));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last().map(str::trim) {
                Some(python) if !python.is_empty() => Ok(PathBuf::from(python)),
                _ => Err(format!(
                    "scripts/dms-venv.sh printed no python path: {}",
                    stderr.trim()
                )),
            }
        })
        .clone()
}

/// A running AutoDMS server; dropping it stops the server and removes its files.
#[derive(Debug)]
pub struct Dms {
    child: Child,
    port: u16,
    client_id: String,
    client_secret: String,
    http: reqwest::Client,
    log: PathBuf,
    // Last: removed after the server is stopped.
    _dir: tempfile::TempDir,
}

impl Dms {
    /// Starts a server that issues tokens to `client_id`/`client_secret` (HTTP Basic or form
    /// fields), valid for `token_ttl` seconds (default 3600), and waits until it listens.
    /// Panics, with the server's stderr, if it does not.
    pub async fn start(client_id: &str, client_secret: &str, token_ttl: Option<u32>) -> Dms {
        let python = tokio::task::spawn_blocking(venv_python)
            .await
            .expect("venv thread")
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = tempfile::Builder::new()
            .prefix("vc-dms-")
            .tempdir()
            .expect("temp dir");
        let ready = dir.path().join("port");
        let log = dir.path().join("server.log");
        let stderr = std::fs::File::create(&log).expect("create the server's log");
        let mut cmd = Command::new(&python);
        cmd.arg(root().join("tests/peers/dms/server.py"))
            .args(["--port", "0", "--ready-file"])
            .arg(&ready)
            .args(["--client-id", client_id, "--client-secret", client_secret]);
        if let Some(ttl) = token_ttl {
            cmd.args(["--token-ttl", &ttl.to_string()]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("run {} server.py: {e}", python.display()));
        let mut dms = Dms {
            child,
            port: 0,
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            http: http_client(),
            log,
            _dir: dir,
        };
        // From here on a panic drops `dms`, which stops the server.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // The server writes the file whole and renames it into place.
            if let Ok(text) = std::fs::read_to_string(&ready) {
                dms.port = text
                    .trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("server.py's ready file says {text:?}: {e}"));
                return dms;
            }
            if let Ok(Some(status)) = dms.child.try_wait() {
                panic!("the AutoDMS server exited ({status}): {}", dms.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "the AutoDMS server did not listen within {START_TIMEOUT:?}: {}",
                    dms.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, no trailing slash: the API's base URL.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The OAuth2 token endpoint (client credentials).
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base_url())
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn client_secret(&self) -> &str {
        &self.client_secret
    }

    /// The OpenAPI document the server validates against.
    pub fn openapi_yaml(&self) -> String {
        openapi_yaml()
    }

    /// The server's stderr so far (start-up, access log lines, its own bugs), for failure
    /// messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `{"vehicles": {id: {vin, make, model, year, stockNumber, status, photos: [{photoId,
    /// position, size, sha256, contentType, filename}], deleted}}, "requests": [{method, path,
    /// status, idempotencyKey, replay, valid, errors, time, contentType, injected, authError,
    /// responseErrors}], "tokensIssued": n}`.
    pub async fn state(&self) -> Value {
        self.admin(reqwest::Method::GET, "state", None).await
    }

    /// The request log (`state()["requests"]`), oldest first.
    pub async fn requests(&self) -> Vec<Value> {
        match self.state().await.get_mut("requests").map(Value::take) {
            Some(Value::Array(requests)) => requests,
            other => panic!("state has no requests array: {other:?}"),
        }
    }

    /// The next `times` requests whose method is `method` (any when empty) and whose path
    /// starts with `path_prefix` are answered `status` once they pass auth and validation:
    /// not applied, not stored for their idempotency key.
    pub async fn fail(&self, method: &str, path_prefix: &str, status: u16, times: u32) {
        let rule = json!({
            "method": method, "pathPrefix": path_prefix, "status": status, "times": times,
        });
        self.admin(reqwest::Method::POST, "fail", Some(rule)).await;
    }

    /// [`Dms::fail`] after letting `skip` matching requests through: fails the
    /// `skip + 1`-th (e.g. the second photo of a vehicle).
    pub async fn fail_after(
        &self,
        method: &str,
        path_prefix: &str,
        status: u16,
        skip: u32,
        times: u32,
    ) {
        let rule = json!({
            "method": method, "pathPrefix": path_prefix, "status": status, "times": times,
            "skip": skip,
        });
        self.admin(reqwest::Method::POST, "fail", Some(rule)).await;
    }

    /// [`Dms::fail`] with a `Retry-After: retry_after_secs` header on those answers.
    pub async fn fail_with_retry_after(
        &self,
        method: &str,
        path_prefix: &str,
        status: u16,
        times: u32,
        retry_after_secs: u64,
    ) {
        let rule = json!({
            "method": method, "pathPrefix": path_prefix, "status": status, "times": times,
            "retryAfter": retry_after_secs,
        });
        self.admin(reqwest::Method::POST, "fail", Some(rule)).await;
    }

    /// Every token issued so far stops working (401 `invalid_token`), as if it expired.
    pub async fn expire_tokens(&self) {
        self.admin(reqwest::Method::POST, "expire-tokens", None)
            .await;
    }

    /// Forgets vehicles, the request log, stored idempotent answers, failure rules and
    /// counters (ids start at `dms-1` again); tokens issued so far stay valid.
    pub async fn reset(&self) {
        self.admin(reqwest::Method::POST, "reset", None).await;
    }

    /// Polls [`Dms::state`] until `done` holds, and returns that state; panics after `timeout`
    /// with `what` and the last state.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.state().await;
            if done(&state) {
                return state;
            }
            if Instant::now() > deadline {
                panic!(
                    "AutoDMS: {what} not within {timeout:?}; state: {}",
                    serde_json::to_string_pretty(&state).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A token for this server's client, as a client would get one (HTTP Basic).
    pub async fn token(&self) -> String {
        let resp = self
            .http
            .post(self.token_url())
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap_or_else(|e| panic!("AutoDMS token: {e}"));
        let body = json_body(resp, "token").await;
        body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("AutoDMS token: no access_token in {body}"))
            .to_string()
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/_admin/{path}", self.base_url());
        let mut req = self.http.request(method, &url);
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("AutoDMS {url}: {e}; server log: {}", self.log()));
        json_body(resp, path).await
    }
}

/// A client for the admin calls. Plain HTTP, but reqwest (`rustls-no-provider`) wants a
/// crypto provider all the same: ring, as the operator's, given here rather than installed as
/// the process's default.
fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .expect("reqwest client")
}

/// The JSON body of a 200, or a panic saying what came instead.
async fn json_body(resp: reqwest::Response, what: &str) -> Value {
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("AutoDMS {what}: read the body: {e}"));
    if status != reqwest::StatusCode::OK {
        panic!(
            "AutoDMS {what}: {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "AutoDMS {what}: not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

impl Drop for Dms {
    fn drop(&mut self) {
        // Nothing to clean up but the temp dir (dropped after this): SIGKILL is enough.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
