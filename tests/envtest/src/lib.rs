//! A real Kubernetes control plane (etcd + kube-apiserver, built from their Go modules by
//! `scripts/build-control-plane.sh`) for vehicle-connect's tests and for `make cluster`,
//! in the spirit of controller-runtime's envtest.
//!
//! Two lifetimes:
//! - [`ControlPlane::shared`]: one per test process. The children get `PR_SET_PDEATHSIG`
//!   from a thread that lives as long as the process, and an `atexit` hook stops them, so
//!   nothing outlives the test binary, whether tests pass, panic, or the process aborts.
//! - [`ControlPlane::start_detached`]: survives the caller (used by `make cluster`), stopped
//!   by [`stop_detached`].

pub mod nats;
pub mod operator;

use std::fs;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};

/// The file that marks the repository's root, next to its workspace Cargo.toml.
const ROOT_MARKER: &str = "scripts/build-control-plane.sh";

/// Root of the vehicle-connect repository, found at run time: `VC_REPO_ROOT` if set, else the
/// nearest directory at or above the working directory (cargo runs tests and benches in their
/// package's directory; `make` in the root). Not the path this crate was compiled at: with a
/// shared `CARGO_TARGET_DIR`, cargo reuses one clone's build in another, whose compile-time
/// path may name a clone that is gone.
pub fn repo_root() -> Result<PathBuf> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    find_repo_root(std::env::var_os("VC_REPO_ROOT").map(PathBuf::from), &cwd)
}

/// [`repo_root`] with its inputs given: the explicit root, or else where the search starts.
pub fn find_repo_root(explicit: Option<PathBuf>, start: &Path) -> Result<PathBuf> {
    if let Some(root) = explicit {
        let root = start.join(root);
        if is_repo_root(&root) {
            return Ok(root);
        }
        bail!(
            "VC_REPO_ROOT={} is not a vehicle-connect checkout (no workspace Cargo.toml with {ROOT_MARKER})",
            root.display()
        );
    }
    match start.ancestors().find(|dir| is_repo_root(dir)) {
        Some(root) => Ok(root.to_path_buf()),
        None => bail!(
            "{} is not inside a vehicle-connect checkout (no workspace Cargo.toml with {ROOT_MARKER} \
             here or above): run from the repository, or set VC_REPO_ROOT to it",
            start.display()
        ),
    }
}

/// The workspace root's Cargo.toml, not a member's (tests/envtest has one too).
fn is_repo_root(dir: &Path) -> bool {
    dir.join(ROOT_MARKER).is_file()
        && fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
}

/// The two control-plane programs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
}

impl Binaries {
    /// `VC_CONTROL_PLANE_DIR` if set, else the cache filled by the build script (which
    /// builds on first use). Fails loudly: a test that cannot get a control plane must fail.
    pub fn locate() -> Result<Self> {
        let dir = match std::env::var_os("VC_CONTROL_PLANE_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let script = repo_root()?.join(ROOT_MARKER);
                let out = Command::new("bash")
                    .arg(&script)
                    .stderr(Stdio::inherit())
                    .output()
                    .with_context(|| format!("running {}", script.display()))?;
                if !out.status.success() {
                    bail!(
                        "{} failed ({}); the control plane could not be built",
                        script.display(),
                        out.status
                    );
                }
                let stdout = String::from_utf8_lossy(&out.stdout);
                PathBuf::from(
                    stdout
                        .lines()
                        .last()
                        .ok_or_else(|| anyhow!("build script printed no directory"))?
                        .trim(),
                )
            }
        };
        let b = Binaries {
            kube_apiserver: dir.join("kube-apiserver"),
            etcd: dir.join("etcd"),
        };
        for p in [&b.kube_apiserver, &b.etcd] {
            if !p.is_file() {
                bail!("control-plane binary missing: {}", p.display());
            }
        }
        Ok(b)
    }
}

/// How the child processes relate to the calling process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lifetime {
    /// Killed by the kernel when the owning thread (which never exits) dies with the process.
    Owned,
    /// In their own session; outlive the caller.
    Detached,
}

/// A running etcd + kube-apiserver pair.
#[derive(Debug)]
pub struct ControlPlane {
    /// Run directory: certificates, etcd data, logs, kubeconfig.
    pub dir: PathBuf,
    /// `https://127.0.0.1:PORT`
    pub server: String,
    pub kubeconfig: PathBuf,
    pub etcd_pid: u32,
    pub apiserver_pid: u32,
    /// Time from start to `/readyz` answering 200.
    pub startup: Duration,
    failures: AtomicUsize,
    ns_counter: AtomicUsize,
}

static SHARED: OnceLock<ControlPlane> = OnceLock::new();
static SHARED_INIT: Mutex<()> = Mutex::new(());

impl ControlPlane {
    /// The control plane of this test process, started on first use.
    /// Panics (failing the test loudly) if it cannot be started.
    pub fn shared() -> &'static ControlPlane {
        if let Some(cp) = SHARED.get() {
            return cp;
        }
        let _guard = SHARED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cp) = SHARED.get() {
            return cp;
        }
        let root = match std::env::var_os("VC_ENVTEST_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => match repo_root() {
                Ok(repo) => repo.join("target/envtest"),
                Err(e) => panic!("could not start the test control plane: {e:#}"),
            },
        };
        cleanup_stale_runs(&root);
        let dir = root.join(format!("{}-{}", std::process::id(), unix_millis()));
        let cp = match Self::start(&dir, Lifetime::Owned) {
            Ok(cp) => cp,
            Err(e) => panic!(
                "could not start the test control plane (logs in {}): {e:#}",
                dir.display()
            ),
        };
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(shared_atexit) };
        let _ = SHARED.set(cp);
        SHARED.get().expect("just set")
    }

    /// Start a pair that keeps running after this process exits (`make cluster`).
    pub fn start_detached(dir: &Path) -> Result<ControlPlane> {
        Self::start(dir, Lifetime::Detached)
    }

    fn start(dir: &Path, lifetime: Lifetime) -> Result<ControlPlane> {
        let started = Instant::now();
        let bins = Binaries::locate()?;
        fs::create_dir_all(dir.join("certs"))?;
        let dir = dir.canonicalize()?;
        let certs = dir.join("certs");
        let pki = Pki::generate()?;
        fs::write(certs.join("ca.crt"), &pki.ca_pem)?;
        fs::write(certs.join("apiserver.crt"), &pki.serving_cert_pem)?;
        fs::write(certs.join("apiserver.key"), &pki.serving_key_pem)?;
        fs::write(certs.join("sa.key"), &pki.sa_key_pem)?;
        fs::write(certs.join("sa.pub"), &pki.sa_pub_pem)?;
        let token = random_token()?;
        // Static token in system:masters: the admin identity; RBAC stays on for everyone else.
        fs::write(
            certs.join("tokens.csv"),
            format!("{token},vc-admin,vc-admin,\"system:masters\"\n"),
        )?;

        let [etcd_client, etcd_peer, api_port] = free_ports()?;
        let etcd_args: Vec<String> = vec![
            "--name=vc".into(),
            format!("--data-dir={}", dir.join("etcd-data").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=vc=http://127.0.0.1:{etcd_peer}"),
            // Test data only: durability of the test cluster is not worth the fsyncs.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        let c = certs.display();
        let api_args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={c}"),
            format!("--tls-cert-file={c}/apiserver.crt"),
            format!("--tls-private-key-file={c}/apiserver.key"),
            format!("--client-ca-file={c}/ca.crt"),
            format!("--token-auth-file={c}/tokens.csv"),
            format!("--service-account-key-file={c}/sa.pub"),
            format!("--service-account-signing-key-file={c}/sa.key"),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            // No controller-manager runs, so nothing would create the token controllers'
            // objects this plugin waits for.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--profiling=false".into(),
            "-v=1".into(),
        ];

        let (tx, rx) = mpsc::channel::<Result<(u32, u32)>>();
        let etcd_bin = bins.etcd.clone();
        let api_bin = bins.kube_apiserver.clone();
        let log_dir = dir.clone();
        let spawn = move || -> Result<(Child, Child)> {
            let etcd = spawn_logged(&etcd_bin, &etcd_args, &log_dir.join("etcd.log"), lifetime)?;
            let api = spawn_logged(
                &api_bin,
                &api_args,
                &log_dir.join("kube-apiserver.log"),
                lifetime,
            )?;
            Ok((etcd, api))
        };
        match lifetime {
            Lifetime::Owned => {
                // PDEATHSIG fires when the *thread* that forked exits, so fork from one
                // that lives (reaping the children) until the process ends.
                std::thread::Builder::new()
                    .name("vc-envtest-reaper".into())
                    .spawn(move || match spawn() {
                        Ok((mut etcd, mut api)) => {
                            let _ = tx.send(Ok((etcd.id(), api.id())));
                            loop {
                                let _ = etcd.try_wait();
                                let _ = api.try_wait();
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    })?;
            }
            Lifetime::Detached => {
                let r = spawn().map(|(etcd, api)| (etcd.id(), api.id()));
                let _ = tx.send(r);
            }
        }
        let (etcd_pid, apiserver_pid) = rx.recv()??;
        fs::write(dir.join("etcd.pid"), format!("{etcd_pid}\n"))?;
        fs::write(dir.join("kube-apiserver.pid"), format!("{apiserver_pid}\n"))?;

        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki.ca_pem, &token))?;

        let cp = ControlPlane {
            dir: dir.clone(),
            server,
            kubeconfig,
            etcd_pid,
            apiserver_pid,
            startup: Duration::ZERO,
            failures: AtomicUsize::new(0),
            ns_counter: AtomicUsize::new(0),
        };
        if let Err(e) = cp.wait_ready(Duration::from_secs(90)) {
            cp.kill();
            return Err(e.context(format!(
                "control plane not ready; logs:\n--- etcd.log (tail)\n{}\n--- kube-apiserver.log (tail)\n{}",
                tail(&dir.join("etcd.log"), 20),
                tail(&dir.join("kube-apiserver.log"), 40)
            )));
        }
        Ok(ControlPlane {
            startup: started.elapsed(),
            ..cp
        })
    }

    /// Polls `/readyz` from a thread with its own runtime, so it works from sync code and
    /// from inside any async test.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let kubeconfig = self.kubeconfig.clone();
        let pids = [self.etcd_pid, self.apiserver_pid];
        std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let client = client_from(&kubeconfig).await?;
                let deadline = Instant::now() + timeout;
                loop {
                    for pid in pids {
                        if !pid_alive(pid) {
                            bail!("process {pid} exited during start-up");
                        }
                    }
                    let req = http::Request::get("/readyz").body(Vec::new())?;
                    let last = match client.request_text(req).await {
                        Ok(body) if body.trim() == "ok" => return Ok(()),
                        Ok(body) => body,
                        Err(e) => e.to_string(),
                    };
                    if Instant::now() > deadline {
                        bail!("/readyz not ok after {timeout:?}: {last}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .join()
        .map_err(|_| anyhow!("readiness thread panicked"))?
    }

    /// A fresh client (build one per async runtime: clients spawn tasks on it).
    pub async fn client(&self) -> Result<Client> {
        client_from(&self.kubeconfig).await
    }

    /// A namespace of its own for one test. Dropping the guard while panicking marks the run
    /// as failed so its control-plane logs are kept.
    pub async fn namespace(&self, prefix: &str) -> Result<TestNamespace> {
        self.namespace_with_annotations(prefix, &[]).await
    }

    pub async fn namespace_with_annotations(
        &self,
        prefix: &str,
        annotations: &[(&str, &str)],
    ) -> Result<TestNamespace> {
        self.namespace_labelled(prefix, &[], annotations).await
    }

    pub async fn namespace_labelled(
        &self,
        prefix: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) -> Result<TestNamespace> {
        let n = self.ns_counter.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{n}-{}", &random_token()?[..6]).to_lowercase();
        let map = |pairs: &[(&str, &str)]| -> serde_json::Map<String, serde_json::Value> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect()
        };
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": map(labels), "annotations": map(annotations) }
        }))?;
        let api: Api<Namespace> = Api::all(self.client().await?);
        api.create(&PostParams::default(), &ns).await?;
        Ok(TestNamespace {
            name,
            logs: self.dir.clone(),
        })
    }

    /// Server-side applies every CRD in the YAML files of `dir` and waits until each is
    /// Established.
    pub async fn install_crds(&self, dir: &Path) -> Result<Vec<String>> {
        let client = self.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client);
        let mut names = Vec::new();
        let mut files: Vec<_> = fs::read_dir(dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        for f in files {
            let text = fs::read_to_string(&f)?;
            for doc in serde_yaml::Deserializer::from_str(&text) {
                let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
                if value.is_null() {
                    continue;
                }
                let crd: CustomResourceDefinition = serde_yaml::from_value(value)
                    .with_context(|| format!("{} is not a CRD", f.display()))?;
                let name = crd.metadata.name.clone().unwrap_or_default();
                api.patch(
                    &name,
                    &PatchParams::apply("vc-envtest").force(),
                    &Patch::Apply(&crd),
                )
                .await
                .with_context(|| format!("applying CRD {name}"))?;
                names.push(name);
            }
        }
        for name in &names {
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not Established within 30s"))??;
        }
        Ok(names)
    }

    /// Record a failed test: the run directory (with both logs) is kept at exit.
    pub fn note_failure(&self) {
        self.failures.fetch_add(1, Ordering::SeqCst);
        let _ = fs::write(self.dir.join("FAILED"), "");
        eprintln!(
            "vc-envtest: a test failed; control-plane logs are kept in {}",
            self.dir.display()
        );
    }

    /// Failures noted so far (the harness's own tests check the bookkeeping).
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// Forget one noted failure (for a test that panics on purpose).
    pub fn forgive_failure(&self) {
        if self.failures.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _ = fs::remove_file(self.dir.join("FAILED"));
        }
    }

    /// SIGKILL both processes and wait until they are gone.
    pub fn kill(&self) {
        for pid in [self.apiserver_pid, self.etcd_pid] {
            // SAFETY: plain syscall on a pid we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while (pid_alive(self.apiserver_pid) || pid_alive(self.etcd_pid))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A namespace owned by one test.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    logs: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(cp) = SHARED.get().filter(|cp| cp.dir == self.logs)
        {
            cp.note_failure();
        }
        // Namespaces are not deleted: without kube-controller-manager they would stay
        // Terminating forever, and the whole etcd goes away with the run.
    }
}

extern "C" fn shared_atexit() {
    if let Some(cp) = SHARED.get() {
        cp.kill();
        if cp.failures() == 0 {
            let _ = fs::remove_dir_all(&cp.dir);
        } else {
            eprintln!(
                "vc-envtest: {} failure(s); control-plane logs kept in {}",
                cp.failures(),
                cp.dir.display()
            );
        }
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it dies with this process (SIGKILL on exit, abort or panic), for
/// helper processes a test keeps in a static, where no destructor would ever run.
/// The fork happens on one long-lived thread, since PDEATHSIG follows the forking thread.
pub fn spawn_owned(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("vc-envtest-spawner".into())
            .spawn(move || {
                while let Ok((mut cmd, reply)) = rx.recv() {
                    let parent = std::process::id() as i32;
                    // SAFETY: only async-signal-safe syscalls between fork and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        })
                    };
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("spawner thread gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("spawner thread gone"))?
}

/// Stop a control plane started with [`ControlPlane::start_detached`] in `dir`.
/// Returns the pids that were stopped.
pub fn stop_detached(dir: &Path) -> Result<Vec<u32>> {
    let mut stopped = Vec::new();
    for name in ["kube-apiserver.pid", "etcd.pid"] {
        let p = dir.join(name);
        let Ok(text) = fs::read_to_string(&p) else {
            continue;
        };
        let pid: u32 = text.trim().parse().context("bad pid file")?;
        if pid_alive(pid) && pid_is_ours(pid, dir) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if pid_alive(pid) {
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                std::thread::sleep(Duration::from_millis(200));
            }
            stopped.push(pid);
        }
        let _ = fs::remove_file(&p);
    }
    let _ = fs::remove_dir_all(dir.join("etcd-data"));
    Ok(stopped)
}

/// Whether `pid` is a live (non-zombie) process.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 (after the parenthesised command) is the state; Z = zombie, X = dead.
        Ok(stat) => match stat.rsplit_once(") ") {
            Some((_, rest)) => !rest.starts_with('Z') && !rest.starts_with('X'),
            None => true,
        },
        Err(_) => false,
    }
}

/// Guards against killing an unrelated process that reused a stale pid.
fn pid_is_ours(pid: u32, dir: &Path) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(&*dir.to_string_lossy()))
        .unwrap_or(false)
}

fn spawn_logged(bin: &Path, args: &[String], log: &Path, lifetime: Lifetime) -> Result<Child> {
    let out = fs::File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    let parent = std::process::id() as i32;
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            match lifetime {
                Lifetime::Owned => {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    // The parent may have died before prctl took effect.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                }
                Lifetime::Detached => {
                    libc::setsid();
                }
            }
            Ok(())
        })
    };
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// Removes run directories of test processes that are gone, unless they hold a failed run
/// (the newest five of those are kept for reading).
fn cleanup_stale_runs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let mut failed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        if e.path().join("FAILED").exists() {
            failed.push(e.path());
        } else {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    failed.sort();
    let keep = failed.len().saturating_sub(5);
    for p in failed.into_iter().take(keep) {
        let _ = fs::remove_dir_all(p);
    }
}

pub async fn client_from(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: vc-local
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: vc-admin
  user:
    token: {token}
contexts:
- name: vc-local
  context:
    cluster: vc-local
    user: vc-admin
    namespace: default
current-context: vc-local
"#
    )
}

struct Pki {
    ca_pem: String,
    serving_cert_pem: String,
    serving_key_pem: String,
    sa_key_pem: String,
    sa_pub_pem: String,
}

impl Pki {
    fn generate() -> Result<Pki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "vc-envtest-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let serving_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving = sp.signed_by(&serving_key, &ca)?;

        let sa = KeyPair::generate()?;
        Ok(Pki {
            ca_pem: ca.pem(),
            serving_cert_pem: serving.pem(),
            serving_key_pem: serving_key.serialize_pem(),
            sa_key_pem: sa.serialize_pem(),
            sa_pub_pem: sa.public_key_pem(),
        })
    }
}

fn free_ports() -> Result<[u16; 3]> {
    // Hold all three listeners at once so the ports differ; the small window between
    // closing them and the servers binding is acceptable for a test harness.
    let ls = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    Ok([
        ls[0].local_addr()?.port(),
        ls[1].local_addr()?.port(),
        ls[2].local_addr()?.port(),
    ])
}

fn random_token() -> Result<String> {
    let mut buf = [0u8; 24];
    fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "vc-envtest-{name}-{}-{}",
                std::process::id(),
                unix_millis()
            ));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir.canonicalize().unwrap())
        }

        fn file(&self, path: &str, text: &str) -> PathBuf {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
            path
        }

        fn dir(&self, path: &str) -> PathBuf {
            let path = self.0.join(path);
            fs::create_dir_all(&path).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A checkout: workspace Cargo.toml, the marker script, a member with a Cargo.toml of its
    /// own (as tests/envtest is) and, inside it, another project's workspace.
    fn checkout(s: &Scratch) -> PathBuf {
        s.file(
            "repo/Cargo.toml",
            "[package]\nname = \"vehicle-connect\"\n\n[workspace]\n",
        );
        s.file("repo/scripts/build-control-plane.sh", "#!/bin/sh\n");
        s.file(
            "repo/tests/envtest/Cargo.toml",
            "[package]\nname = \"vc-envtest\"\n",
        );
        s.file("repo/tests/envtest/other/Cargo.toml", "[workspace]\n");
        s.0.join("repo")
    }

    #[test]
    fn walks_up_past_members_and_other_workspaces_to_the_checkout() {
        let s = Scratch::new("walk");
        let repo = checkout(&s);
        let deep = s.dir("repo/tests/envtest/other/src");
        assert_eq!(find_repo_root(None, &deep).unwrap(), repo);
        assert_eq!(find_repo_root(None, &repo).unwrap(), repo);
    }

    #[test]
    fn vc_repo_root_wins_over_the_working_directory() {
        let s = Scratch::new("explicit");
        let repo = checkout(&s);
        let elsewhere = s.dir("elsewhere");
        assert_eq!(
            find_repo_root(Some(repo.clone()), &elsewhere).unwrap(),
            repo
        );
        // Relative to the working directory, as a shell would mean it.
        assert_eq!(
            find_repo_root(Some("../repo".into()), &elsewhere).unwrap(),
            elsewhere.join("../repo")
        );
    }

    #[test]
    fn a_wrong_vc_repo_root_is_an_error_even_inside_a_checkout() {
        let s = Scratch::new("wrong");
        let repo = checkout(&s);
        let not_repo = s.dir("repo/tests/envtest");
        let err = find_repo_root(Some(not_repo.clone()), &repo).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("VC_REPO_ROOT") && msg.contains(&not_repo.display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn outside_a_checkout_the_error_says_what_to_do() {
        let s = Scratch::new("outside");
        // A workspace, but another project's: no scripts/build-control-plane.sh.
        s.file("ws/Cargo.toml", "[workspace]\n");
        let start = s.dir("ws/src");
        let msg = format!("{:#}", find_repo_root(None, &start).unwrap_err());
        assert!(msg.contains("set VC_REPO_ROOT"), "{msg}");
        assert!(msg.contains(&start.display().to_string()), "{msg}");
    }

    /// Cargo runs this crate's tests in tests/envtest: from there the lookup must land on
    /// this checkout, two levels up.
    #[test]
    fn from_this_crates_directory_it_finds_this_checkout() {
        let cwd = std::env::current_dir().unwrap();
        assert!(
            cwd.ends_with("tests/envtest"),
            "cargo ran us in {}",
            cwd.display()
        );
        let found = find_repo_root(None, &cwd).unwrap();
        assert_eq!(found, cwd.parent().unwrap().parent().unwrap());
    }
}
