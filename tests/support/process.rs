//! The operator as a real process (`vehicle-connect run`) against the test control plane,
//! with its own data dir, ingest token and HTTP port; can be SIGKILLed and restarted.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vc_envtest::ControlPlane;

pub const TOKEN: &str = "test-ingest-token";

pub struct OperatorProcess {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    token_file: PathBuf,
    /// Extra `run` arguments, kept for restarts.
    args: Vec<String>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl OperatorProcess {
    /// Starts the operator and waits for `/readyz` (CRDs must be installed).
    pub async fn start(cp: &ControlPlane, data_dir: PathBuf) -> OperatorProcess {
        Self::start_with(cp, data_dir, &[]).await
    }

    /// Starts the operator with extra `run` arguments (kept across restarts).
    pub async fn start_with(
        cp: &ControlPlane,
        data_dir: PathBuf,
        args: &[&str],
    ) -> OperatorProcess {
        std::fs::create_dir_all(&data_dir).unwrap();
        let token_file = data_dir.with_extension("tokens");
        std::fs::write(&token_file, format!("# test tokens\n{TOKEN}\n")).unwrap();
        let port = free_port();
        let log = data_dir.with_extension(format!("{port}.log"));
        let args = args.iter().map(|a| a.to_string()).collect();
        Self::spawn(cp, data_dir, token_file, port, log, args).await
    }

    async fn spawn(
        cp: &ControlPlane,
        data_dir: PathBuf,
        token_file: PathBuf,
        port: u16,
        log: PathBuf,
        args: Vec<String>,
    ) -> OperatorProcess {
        let out = std::fs::File::create(&log).unwrap();
        // VC_TEST_OPERATOR_BIN runs these tests against another build (e.g. an older commit,
        // to show a test fails without its fix); by default, this crate's binary.
        let bin = std::env::var_os("VC_TEST_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_vehicle-connect")));
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--allow-targets",
            "127.0.0.0/8",
        ])
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--ingest-token-file")
        .arg(&token_file)
        .args(&args)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("RUST_LOG", "info,vehicle_connect=debug")
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out));
        // Dies with the test process even when held in a static that is never dropped.
        let child = vc_envtest::spawn_owned(cmd).expect("start vehicle-connect");
        let op = OperatorProcess {
            child,
            port,
            data_dir,
            log,
            token_file,
            args,
        };
        op.wait_ready().await;
        op
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "operator not ready in 60s; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts again on the same data dir and port.
    pub async fn restart(mut self, cp: &ControlPlane) -> OperatorProcess {
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
            self.args.clone(),
        )
        .await
    }

    /// Stops it (SIGKILL) without starting again; `restart` brings it back.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
