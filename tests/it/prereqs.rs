//! `scripts/check-prereqs.sh`, the check `make demo` and `make test` start with, run with a
//! PATH of stand-in tools, so each case is the same on every machine: what is missing or too
//! old is named with how to get it, and a machine with everything passes.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

/// The tools the check looks for, as shell scripts that answer the way the real ones do.
struct Tools {
    bin: TempDir,
    /// Empty: nothing is built yet, so Go is needed (the check asks the build scripts).
    cache: TempDir,
    bash: PathBuf,
}

impl Tools {
    /// Every prerequisite, new enough.
    fn complete() -> Tools {
        let bash = on_path("bash");
        let tools = Tools {
            bin: TempDir::new().unwrap(),
            cache: TempDir::new().unwrap(),
            bash,
        };
        tools.go("go99.0.0");
        tools.rustc("99.0.0");
        tools.python3(true);
        tools.script("cargo", "exit 0");
        tools.script("kubectl", "exit 0");
        tools.script("curl", "exit 0");
        tools
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.bin.path().join(name);
        std::fs::write(&path, format!("#!{}\n{body}\n", self.bash.display())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.bin.path().join(name)).unwrap();
    }

    /// `go env GOVERSION` prints this.
    fn go(&self, version: &str) {
        self.script("go", &format!("echo {version}"));
    }

    fn rustc(&self, version: &str) {
        self.script(
            "rustc",
            &format!("echo 'rustc {version} (0000000 2026-01-01)'"),
        );
    }

    /// Python 3.11; `venv: false` is Debian's python3 without python3-venv (no ensurepip).
    fn python3(&self, venv: bool) {
        let import = if venv { "exit 0" } else { "exit 1" };
        self.script(
            "python3",
            &format!("case \"$2\" in *ensurepip*) {import} ;; *version_info*) echo 3.11.2 ;; esac"),
        );
    }

    fn check(&self, args: &[&str]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/check-prereqs.sh");
        Command::new(&self.bash)
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", self.bin.path())
            .env("HOME", self.cache.path())
            .env("VC_CACHE_DIR", self.cache.path())
            // Pins of our own, so the cache layout below does not follow the real ones.
            .env("VC_K8S_VERSION", "v1.0.0-test")
            .env("VC_ETCD_VERSION", "v3.0.0-test")
            .env("VC_HELM_VERSION", "v3.0.0-test")
            .output()
            .unwrap()
    }
}

/// The absolute path of a program on this process's PATH.
fn on_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {name} on PATH"))
}

/// The check's report: stderr, and the problems it lists (lines starting `  - `).
fn problems(out: &Output) -> (String, Vec<String>) {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let listed = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("  - "))
        .map(str::to_owned)
        .collect();
    (stderr, listed)
}

/// A port on 127.0.0.1 that nothing listens on (for the moment; the kernel picked it).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_machine_with_everything_passes() {
    let tools = Tools::complete();
    let port = format!("{}:the operator's API", free_port());
    // `demo`: `test` also wants root and the Debian peers, which depend on the machine.
    let out = tools.check(&["demo", "--port", &port]);
    let (stderr, listed) = problems(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(listed.is_empty(), "{stderr}");
    assert!(stderr.contains("make demo has what it needs"), "{stderr}");
}

#[test]
fn without_kubectl_the_check_names_kubectl_and_where_to_get_it() {
    let tools = Tools::complete();
    tools.remove("kubectl");
    for mode in ["demo", "test"] {
        let out = tools.check(&[mode]);
        let (stderr, listed) = problems(&out);
        assert_eq!(out.status.code(), Some(1), "{mode}: {stderr}");
        assert!(
            stderr.starts_with(&format!("check-prereqs: make {mode} cannot run")),
            "{stderr}"
        );
        let kubectl: Vec<_> = listed.iter().filter(|p| p.starts_with("kubectl")).collect();
        assert_eq!(kubectl.len(), 1, "{stderr}");
        assert!(kubectl[0].contains("not on PATH"), "{stderr}");
        assert!(
            kubectl[0].contains("https://kubernetes.io/docs/tasks/tools/"),
            "{stderr}"
        );
        // Nothing else is missing in demo mode; `test` may add root or Debian packages.
        if mode == "demo" {
            assert_eq!(listed.len(), 1, "{stderr}");
        }
    }
}

#[test]
fn go_and_rust_older_than_the_builds_need_are_named_with_what_was_found() {
    let tools = Tools::complete();
    tools.go("go1.20.7");
    tools.rustc("1.0.0");
    let out = tools.check(&["demo"]);
    let (stderr, listed) = problems(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(listed.len(), 2, "{stderr}");
    assert!(
        listed[0].starts_with("go ") && listed[0].contains("found go1.20.7"),
        "{stderr}"
    );
    let rust_version =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = \""))
            .map(|v| v.trim_end_matches('"').to_owned())
            .expect("Cargo.toml has a rust-version");
    assert!(
        listed[1].starts_with(&format!("cargo and rustc {rust_version} or newer"))
            && listed[1].contains("found rustc 1.0.0")
            && listed[1].contains("rustup"),
        "{stderr}"
    );
}

#[test]
fn go_is_not_needed_once_the_control_plane_is_built() {
    let tools = Tools::complete();
    tools.remove("go");
    let out = tools.check(&["demo"]);
    let (stderr, listed) = problems(&out);
    assert_eq!(listed.len(), 1, "{stderr}");
    assert!(
        listed[0].starts_with("go ") && listed[0].contains("not on PATH"),
        "{stderr}"
    );

    // What scripts/build-control-plane.sh takes for a finished build.
    let built = tools
        .cache
        .path()
        .join("control-plane/k8s-v1.0.0-test-etcd-v3.0.0-test");
    std::fs::create_dir_all(&built).unwrap();
    for f in ["kube-apiserver", "etcd", ".complete"] {
        std::fs::write(built.join(f), "").unwrap();
        std::fs::set_permissions(built.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = tools.check(&["demo"]);
    let (stderr, listed) = problems(&out);
    assert!(out.status.success() && listed.is_empty(), "{stderr}");
}

#[test]
fn python_without_venv_is_named_with_the_debian_package() {
    let tools = Tools::complete();
    tools.python3(false);
    let out = tools.check(&["demo"]);
    let (stderr, listed) = problems(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(listed.len(), 1, "{stderr}");
    assert!(
        listed[0].starts_with("python3 3.10 or newer with its venv module")
            && listed[0].contains("apt-get install python3-venv"),
        "{stderr}"
    );
}

#[test]
fn a_busy_demo_port_is_named_with_what_needs_it() {
    let tools = Tools::complete();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let free = free_port();
    let out = tools.check(&[
        "demo",
        "--port",
        &format!("{port}:the webhook receiver"),
        "--port",
        &format!("{free}:the image server"),
    ]);
    let (stderr, listed) = problems(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(listed.len(), 1, "{stderr}");
    assert!(
        listed[0].starts_with(&format!(
            "port {port} on 127.0.0.1 (the webhook receiver): in use"
        )),
        "{stderr}"
    );
}
