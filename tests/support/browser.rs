//! A real headless Chromium for the console tests, driven over WebDriver: Debian's
//! `chromium` and `chromium-driver` (scripts/install-browser.sh; `make peers` installs them).
//! chromedriver listens on 127.0.0.1 only, and the browser's proxy is a closed loopback port,
//! so a page can reach nothing but loopback. A missing or broken browser fails the test with
//! the reason; it never skips.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
    log: PathBuf,
}

fn find(env: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for c in candidates {
        for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
            let p = dir.join(c);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Where screenshots go: `VC_CONSOLE_SCREENSHOTS`, or `target/console-screenshots`.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("VC_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots"))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session of `width`×`height`; panics with
    /// what is missing and how to install it.
    pub async fn start(width: u32, height: u32) -> Browser {
        let how = "install them with scripts/install-browser.sh (Debian's chromium and chromium-driver; `make peers` runs it)";
        let chromium = find("VC_CHROMIUM", &["chromium", "chromium-browser"])
            .unwrap_or_else(|| panic!("the console tests need Chromium, and none was found (VC_CHROMIUM, chromium on PATH): {how}"));
        let chromedriver = find("VC_CHROMEDRIVER", &["chromedriver"])
            .unwrap_or_else(|| panic!("the console tests need chromedriver, and none was found (VC_CHROMEDRIVER, chromedriver on PATH): {how}"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let profile = tempfile::tempdir().expect("browser profile dir");
        let log = profile.path().join("chromedriver.log");
        let mut cmd = Command::new(&chromedriver);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg(format!("--log-path={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let driver = vc_envtest::spawn_owned(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {how}", chromedriver.display()));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not answer on {url} within 20 s; its log:\n{}",
                chromedriver.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut caps = Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    // Root (CI) cannot use Chromium's sandbox.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--disable-extensions",
                    "--disable-sync",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-default-apps",
                    "--disable-domain-reliability",
                    "--disable-client-side-phishing-detection",
                    "--no-pings",
                    // Anything not on loopback goes to a closed loopback port and fails.
                    "--proxy-server=http://127.0.0.1:9",
                    "--lang=en-US",
                ]
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start {}: {e}; chromedriver's log:\n{}",
                    chromium.display(),
                    vc_envtest::tail(&log, 40)
                )
            });
        let shots = screenshot_dir();
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser {
            client,
            driver,
            _profile: profile,
            shots,
            log,
        }
    }

    /// Writes a PNG of the window to the screenshot directory as `name.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// The element matching the CSS selector, waited for (10 s).
    pub async fn wait_css(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} within 10 s: {e}"))
    }

    /// Waits until the text of the element matching `css` satisfies `ok`; returns it.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(el) = self.client.find(Locator::Css(css)).await
                && let Ok(t) = el.text().await
            {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        panic!("{css} never showed {what}; last text: {last:?}");
    }

    /// Replaces the value of the input matching `css` with `text` (as typed).
    pub async fn fill(&self, css: &str, text: &str) {
        let el = self.wait_css(css).await;
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("type");
    }

    /// Sets the value of the input matching `css` as a script would: date and time inputs
    /// take typed text in the browser's locale's order, a value in their own format.
    pub async fn set_value(&self, css: &str, value: &str) {
        self.wait_css(css).await;
        self.client
            .execute(
                "document.querySelector(arguments[0]).value = arguments[1];",
                vec![css.into(), value.into()],
            )
            .await
            .expect("set the value");
    }

    pub async fn click(&self, css: &str) {
        self.wait_css(css).await.click().await.expect("click");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    /// Ends the session (Chromium exits) and chromedriver.
    pub async fn close(mut self) {
        if let Err(e) = self.client.clone().close().await {
            eprintln!(
                "closing the browser session: {e}; chromedriver's log:\n{}",
                vc_envtest::tail(&self.log, 20)
            );
        }
        self.stop();
    }

    /// Ends chromedriver and every Chromium process of this profile, by pid: a browser left
    /// running (a test that panicked, a session that did not close) would outlive the test.
    fn stop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = format!(
            "--user-data-dir={}",
            self._profile.path().join("profile").display()
        );
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmdline = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == profile.as_bytes())
            {
                // SAFETY: kill(2) on a pid whose command line names our own profile directory.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.stop();
    }
}
