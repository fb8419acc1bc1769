//! The operator as a real process (`vehicle-connect run`) against a control plane, with its
//! own data dir, ingest token and HTTP port; can be SIGKILLed and restarted. Used by the
//! integration tests and the benchmarks alike (they pass the binary cargo built for them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ControlPlane;

/// The ingest token every operator started here accepts (for any client).
pub const TOKEN: &str = "test-ingest-token";

/// How to start one.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The `vehicle-connect` binary.
    pub bin: PathBuf,
    /// More `run` arguments.
    pub args: Vec<String>,
    /// `--allow-targets`: all of loopback (`127.0.0.0/8`) unless set.
    pub allow_targets: String,
    /// `RUST_LOG` of the process.
    pub rust_log: String,
    /// More environment variables of the process (e.g. `SSL_CERT_FILE`, its trust store).
    pub env: Vec<(String, String)>,
}

impl Launch {
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Launch {
            bin: bin.into(),
            args: Vec::new(),
            allow_targets: "127.0.0.0/8".into(),
            rust_log: "info,vehicle_connect=debug".into(),
            env: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// The SSRF guard's allow-list instead of all of loopback (e.g. `127.0.0.1/32`, to show
    /// that another loopback address is refused).
    pub fn allow_targets(mut self, cidrs: &str) -> Self {
        self.allow_targets = cidrs.into();
        self
    }

    pub fn rust_log(mut self, level: &str) -> Self {
        self.rust_log = level.into();
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }
}

pub struct OperatorProcess {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    token_file: PathBuf,
    launch: Launch,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl OperatorProcess {
    /// Starts the operator on a free port and waits for `/readyz` (CRDs must be installed).
    pub async fn start(
        cp: &ControlPlane,
        data_dir: PathBuf,
        launch: Launch,
    ) -> anyhow::Result<OperatorProcess> {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let token_file = data_dir.with_extension("tokens");
        std::fs::write(&token_file, format!("# test tokens\n{TOKEN}\n"))?;
        let port = free_port()?;
        let log = data_dir.with_extension(format!("{port}.log"));
        Self::spawn(cp, data_dir, token_file, port, log, launch).await
    }

    async fn spawn(
        cp: &ControlPlane,
        data_dir: PathBuf,
        token_file: PathBuf,
        port: u16,
        log: PathBuf,
        launch: Launch,
    ) -> anyhow::Result<OperatorProcess> {
        let out = std::fs::File::create(&log)?;
        let mut cmd = Command::new(&launch.bin);
        cmd.args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-targets",
            &launch.allow_targets,
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--ingest-token-file")
        .arg(&token_file)
        .args(&launch.args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", &launch.rust_log)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::from(out.try_clone()?))
        .stderr(Stdio::from(out));
        // Dies with the test process even when held in a static that is never dropped.
        let child = crate::spawn_owned(cmd)
            .with_context(|| format!("starting {}", launch.bin.display()))?;
        let op = OperatorProcess {
            child,
            port,
            data_dir,
            log,
            token_file,
            launch,
        };
        op.wait_ready().await?;
        Ok(op)
    }

    /// Whether `/readyz` answers 200 (one plain HTTP/1.1 request on loopback).
    pub async fn is_ready(&self) -> bool {
        let ask = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .await?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head).await?;
            Ok::<_, std::io::Error>(head.starts_with(b"HTTP/1.1 200"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ask).await,
            Ok(Ok(true))
        )
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.is_ready().await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "operator not ready in 60s; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again (after a SIGKILL if it still runs) on the same data dir and port.
    pub async fn restart(mut self, cp: &ControlPlane) -> anyhow::Result<OperatorProcess> {
        self.kill();
        let log = self
            .data_dir
            .with_extension(format!("{}.restarted.log", self.port));
        Self::spawn(
            cp,
            self.data_dir.clone(),
            self.token_file.clone(),
            self.port,
            log,
            self.launch.clone(),
        )
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
