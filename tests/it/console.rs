//! The web console and the API it reads, end to end: a real operator process on the test
//! control plane with manage tokens, real webhook receivers, and a real headless Chromium
//! (tests/support/browser.rs) driving `/console`. A screenshot of each page goes to
//! `target/console-screenshots/` (or `VC_CONSOLE_SCREENSHOTS`).

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::{Value, json};
use vc_envtest::ControlPlane;
use vehicle_connect::api::WebhookSubscription;

use crate::support::browser::Browser;
use crate::support::ftp_server::FtpServer;
use crate::support::operator::{apply_value, condition, wait_for};
use crate::support::process::{OperatorProcess, TOKEN};
use crate::support::receiver::{Receiver, Reply};
use crate::support::scope::{LABEL, Scope};

const OPS: &str = "console-ops-token-0123456789";
const DEALER_A: &str = "console-dealer-a-token-0123456789";
const DEALER_B: &str = "console-dealer-b-token-0123456789";
/// Dealer C manages its own webhook through the console (self-service).
const DEALER_C: &str = "console-dealer-c-token-0123456789";
/// Dealer D adds an FTP connection through the console (self-service).
const DEALER_D: &str = "console-dealer-d-token-0123456789";

static SCOPE: LazyLock<Scope> = LazyLock::new(|| Scope::new("console"));

/// Two clients, each with a namespace and a webhook to the receiver, and the operator.
struct World {
    op: OperatorProcess,
    receiver: Receiver,
    client_a: String,
    client_b: String,
    ns_a: String,
    ns_b: String,
    client_c: String,
    /// Dealer C's self-service namespace.
    ns_c: String,
    client_d: String,
    ns_d: String,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// Built once on a runtime of its own that outlives every test's (the receiver serves on it).
fn world() -> &'static World {
    WORLD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("console-world".into())
            .spawn(move || {
                let rt = tokio::runtime::Runtime::new().expect("runtime");
                rt.block_on(async move {
                    tx.send(build_world().await).expect("send world");
                    std::future::pending::<()>().await;
                });
            })
            .expect("world thread");
        rx.recv()
            .expect("the console world was not built (see the panic above)")
    })
}

async fn build_world() -> World {
    let cp = ControlPlane::shared();
    cp.install_crds(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds"))
        .await
        .expect("CRDs");
    let n = std::process::id();
    let client_a = format!("dealer-console-a-{n}");
    let client_b = format!("dealer-console-b-{n}");
    let client_c = format!("dealer-console-c-{n}");
    let client_d = format!("dealer-console-d-{n}");
    let tokens = cp.dir.join(format!("console-manage-{n}.tokens"));
    std::fs::write(
        &tokens,
        format!("{OPS} *\n{DEALER_A} {client_a}\n{DEALER_B} {client_b}\n{DEALER_C} {client_c}\n{DEALER_D} {client_d}\n"),
    )
    .expect("manage tokens");
    let ns_a = SCOPE
        .namespace(cp, "console-a", &client_a)
        .await
        .name
        .clone();
    let ns_b = SCOPE
        .namespace(cp, "console-b", &client_b)
        .await
        .name
        .clone();
    let ns_c = self_service_namespace(cp, "console-c", &client_c).await;
    let ns_d = self_service_namespace(cp, "console-d", &client_d).await;
    let dir = cp.dir.join(format!("operator-console-{n}"));
    let op = crate::support::process::start_with(
        cp,
        dir,
        &SCOPE,
        &["--manage-token-file", tokens.to_str().expect("utf-8 path")],
    )
    .await;
    let receiver = Receiver::start(None).await;
    let w = World {
        op,
        receiver,
        client_a,
        client_b,
        ns_a,
        ns_b,
        client_c,
        ns_c,
        client_d,
        ns_d,
    };
    let kube = cp.client().await.expect("client");
    w.webhook(&kube, &w.ns_a, "crm-a", &w.client_a, "a").await;
    w.webhook(&kube, &w.ns_b, "crm-b", &w.client_b, "b").await;
    w
}

/// A namespace of this scope designated for `client`'s self-service.
async fn self_service_namespace(cp: &ControlPlane, prefix: &str, client: &str) -> String {
    cp.namespace_labelled(
        prefix,
        &[(LABEL, &SCOPE.to_string())],
        &[
            ("connect.vehicles.io/clients", client),
            ("connect.vehicles.io/self-service-client", client),
        ],
    )
    .await
    .expect("self-service namespace")
    .name
    .clone()
}

impl World {
    /// A webhook of `client` in `ns` to the receiver's `path`, waited for until Ready.
    async fn webhook(&self, kube: &kube::Client, ns: &str, name: &str, client: &str, path: &str) {
        apply_value(
            kube,
            ns,
            json!({
                "apiVersion": "connect.vehicles.io/v1alpha1", "kind": "WebhookSubscription",
                "metadata": { "name": name },
                "spec": {
                    "url": self.receiver.url(path), "clientId": client,
                    "events": ["vehicle.processed"], "timeoutSeconds": 2,
                    "retry": { "maxAttempts": 2, "initialBackoffSeconds": 1, "maxBackoffSeconds": 1 }
                }
            }),
        )
        .await;
        let api: Api<WebhookSubscription> = Api::namespaced(kube.clone(), ns);
        wait_for(&api, name, "Ready", |w| {
            w.status
                .as_ref()
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|c| c.0 == "True")
        })
        .await;
    }

    fn url(&self, path: &str) -> String {
        self.op.url(path)
    }

    async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        let code = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (code, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The target at `path` (a `/v1/targets/...` URL) once its Ready condition is True.
    async fn wait_ready(&self, token: &str, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, t) = self.get(token, path).await;
            let ready = t["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            if code == 200 && ready {
                return t;
            }
            assert!(Instant::now() < deadline, "{path} never Ready: {code} {t}");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn post_event(&self, client: &str, id: &str, vin: &str) {
        let r = reqwest::Client::new()
            .post(self.url("/v1/events"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(
                json!({
                    "id": id, "type": "vehicle.processed", "timestamp": "2026-11-27T10:15:30Z",
                    "clientId": client, "userId": "u-1",
                    "data": { "vehicle": { "id": format!("veh-{id}"), "vin": vin } }
                })
                .to_string(),
            )
            .send()
            .await
            .expect("POST /v1/events");
        assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
    }
}

fn names(list: &Value) -> Vec<String> {
    list["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .map(|t| {
            format!(
                "{}/{}",
                t["namespace"].as_str().unwrap_or(""),
                t["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

#[tokio::test]
async fn targets_api_shows_each_caller_only_its_targets_with_health() {
    let w = world();
    let a = format!("{}/crm-a", w.ns_a);
    let b = format!("{}/crm-b", w.ns_b);

    let (code, body) = w.get("not-a-token", "/v1/targets").await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");

    let (code, all) = w.get(OPS, "/v1/targets").await;
    assert_eq!(code, 200, "{all}");
    let all = names(&all);
    assert!(all.contains(&a) && all.contains(&b), "{all:?}");

    let (code, mine) = w.get(DEALER_A, "/v1/targets").await;
    assert_eq!(code, 200, "{mine}");
    assert_eq!(names(&mine), [a], "dealer A sees only its own");
    let t = &mine["targets"][0];
    assert_eq!(t["kind"], "webhooksubscription");
    assert_eq!(t["client"], w.client_a.as_str());
    assert_eq!(t["events"], json!(["vehicle.processed"]));
    assert_eq!(t["selfService"], false);
    assert_eq!(t["endpoint"], w.receiver.url("a").as_str());
    let ready = t["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready["status"], "True", "{t}");

    // Another client's target, by every spelling of its kind, is as absent as a missing one.
    for kind in ["webhooksubscription", "whs"] {
        let (code, body) = w
            .get(DEALER_A, &format!("/v1/targets/{kind}/{}/crm-b", w.ns_b))
            .await;
        assert_eq!(code, 404, "{body}");
        let (code, missing) = w
            .get(DEALER_A, &format!("/v1/targets/{kind}/{}/nothing", w.ns_a))
            .await;
        assert_eq!(code, 404);
        assert_eq!(body["error"], missing["error"]);
    }
    let (code, _) = w
        .get(DEALER_B, &format!("/v1/targets/whs/{}/crm-b", w.ns_b))
        .await;
    assert_eq!(code, 200);

    // A delivery shows in the counters.
    w.post_event(&w.client_a, "evt-console-api-1", "WVWZZZ1JZXW000101")
        .await;
    w.receiver.wait_for("a", 1).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, one) = w
            .get(DEALER_A, &format!("/v1/targets/whs/{}/crm-a", w.ns_a))
            .await;
        assert_eq!(code, 200, "{one}");
        if one["counters"]["delivered"].as_u64().unwrap_or(0) >= 1 {
            assert!(one["counters"]["lastDelivery"]["at"].is_string(), "{one}");
            break;
        }
        assert!(Instant::now() < deadline, "delivered never counted: {one}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn console_serves_its_files_with_a_strict_policy() {
    let w = world();
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
        .get(w.url("/console"))
        .send()
        .await
        .expect("GET /console");
    assert_eq!(r.status().as_u16(), 308);
    assert_eq!(r.headers()["location"], "/console/");
    for (path, ct) in [
        ("/console/", "text/html; charset=utf-8"),
        ("/console/app.js", "text/javascript; charset=utf-8"),
        ("/console/app.css", "text/css; charset=utf-8"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let r = reqwest::get(w.url(path)).await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], ct, "{path}");
        let csp = h["content-security-policy"].to_str().expect("csp");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let r = reqwest::get(w.url("/console/nothing.js"))
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn preview_names_files_and_names_the_bad_field() {
    let w = world();
    let post = |token: &'static str, body: Value| async move {
        let r = reqwest::Client::new()
            .post(w.url("/v1/preview/file-names"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST");
        let code = r.status().as_u16();
        let bytes = r.bytes().await.unwrap_or_default();
        (
            code,
            serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
        )
    };
    let (code, p) = post(
        DEALER_A,
        json!({ "rules": { "baseDirectory": "in", "directory": "{make}", "fileName": "{vin}-{index:03}.{ext}" },
                "vehicle": { "vin": "VIN1", "make": "Audi" }, "images": 2 }),
    )
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(
        p["files"],
        json!(["in/Audi/VIN1-001.jpg", "in/Audi/VIN1-002.jpg"])
    );
    assert_eq!(p["directory"], "in/Audi");

    let (code, e) = post(
        DEALER_A,
        json!({ "rules": { "fileName": "{vim}_{index}.{ext}" } }),
    )
    .await;
    assert_eq!(code, 400, "{e}");
    assert_eq!(e["field"], "rules.fileName");
    assert!(e["message"].as_str().unwrap_or("").contains("{vin}"), "{e}");

    let (code, _) = post("wrong", json!({})).await;
    assert_eq!(code, 401);
}

/// The console in a real Chromium: a wrong token refused, sign in, the client's targets and
/// not another's, the FTP form's live preview; a screenshot of each page.
#[tokio::test]
async fn console_in_a_real_browser() {
    let w = world();
    let browser = Browser::start(1280, 900).await;
    let b = &browser;
    b.goto(&w.url("/console/")).await;

    // A wrong token is refused, in words.
    b.wait_css("#signin").await;
    b.screenshot("01-sign-in").await;
    b.fill("#signin input[name=token]", "not-a-token").await;
    b.click("#signin button[type=submit]").await;
    let refused = b
        .wait_text("#signin-refused", "a refusal", |t| t.contains("refused"))
        .await;
    assert!(refused.contains("token was refused"), "{refused}");
    b.screenshot("02-sign-in-refused").await;

    // Dealer A signs in and sees its target with its health, and not dealer B's.
    b.fill("#signin input[name=token]", DEALER_A).await;
    b.click("#signin button[type=submit]").await;
    let table = b
        .wait_text("#targets", "dealer A's target", |t| t.contains("crm-a"))
        .await;
    assert!(
        !table.contains("crm-b"),
        "dealer A sees dealer B's target: {table}"
    );
    assert!(table.contains("Ready: True"), "{table}");
    b.screenshot("03-targets").await;

    // The FTP form previews names live and names a bad template's field.
    b.goto(&w.url("/console/#/ftp")).await;
    b.wait_text("#preview-names", "the default names", |t| {
        t.contains("WVWZZZ1JZXW000001_01.jpg")
    })
    .await;
    b.fill(
        "#ftp-form input[name='rules.fileName']",
        "{vim}_{index}.{ext}",
    )
    .await;
    let err = b
        .wait_text("#preview-error", "the bad field", |t| {
            t.contains("rules.fileName")
        })
        .await;
    assert!(err.contains("did you mean {vin}"), "{err}");
    b.client
        .execute(
            "document.getElementById('preview').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .expect("scroll");
    b.screenshot("04-ftp-form-error").await;
    b.fill(
        "#ftp-form input[name='rules.fileName']",
        "{stock}-{index:03}.{ext}",
    )
    .await;
    b.fill("#ftp-form input[name='rules.directory']", "{make}/{vin}")
        .await;
    let names = b
        .wait_text("#preview-names", "the new names", |t| {
            t.contains("Volkswagen/WVWZZZ1JZXW000001/A1234-001.jpg")
        })
        .await;
    assert!(names.contains("A1234-003.jpg"), "{names}");
    b.client
        .execute(
            "document.getElementById('preview').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .expect("scroll");
    b.screenshot("05-ftp-form-preview").await;

    // On a phone the targets are cards, still readable.
    b.client.set_window_size(390, 844).await.expect("resize");
    b.goto(&w.url("/console/#/targets")).await;
    b.wait_text("#targets", "the target", |t| t.contains("crm-a"))
        .await;
    b.screenshot("06-targets-phone").await;

    // Signing out forgets the token.
    b.click("#sign-out").await;
    b.wait_css("#signin").await;
    let token = b
        .client
        .execute("return sessionStorage.getItem('vc-console-token')", vec![])
        .await
        .expect("script");
    assert_eq!(token, Value::Null);
    browser.close().await;
}

/// Self-service and the delivery log in a real Chromium: dealer C adds a webhook through the
/// form, an event to a receiver that refuses it shows as failed in the log, "Retry" delivers
/// it, the event page shows both attempts with the receiver's answers, "Send test event"
/// returns the receiver's answer; a screenshot of each page.
#[tokio::test]
async fn console_self_service_log_retry_and_test_in_a_real_browser() {
    let w = world();
    // The first request is refused for good (400: not retried), later ones are taken.
    w.receiver
        .script("c", vec![Reply::Status(400), Reply::Status(200)]);
    let browser = Browser::start(1280, 900).await;
    let b = &browser;
    b.goto(&w.url("/console/")).await;
    b.fill("#signin input[name=token]", DEALER_C).await;
    b.click("#signin button[type=submit]").await;
    b.wait_css("#targets, #main p").await;

    // Add a webhook through the form.
    b.goto(&w.url("/console/#/webhook")).await;
    b.fill("#webhook-form input[name=name]", "crm-c").await;
    b.fill("#webhook-form input[name=url]", &w.receiver.url("c"))
        .await;
    b.fill("#webhook-form input[name=username]", "dms").await;
    b.fill("#webhook-form input[name=password]", "s3cret").await;
    b.screenshot("07-webhook-form").await;
    b.click("#webhook-form button[type=submit]").await;
    b.wait_text("#webhook-form #form-result", "saved", |t| {
        t.contains("Saved crm-c")
    })
    .await;
    b.screenshot("08-webhook-saved").await;

    // It is a real resource, and the operator makes it Ready.
    let t = w
        .wait_ready(DEALER_C, &format!("/v1/targets/whs/{}/crm-c", w.ns_c))
        .await;
    assert_eq!(t["selfService"], true, "{t}");
    b.goto(&w.url("/console/#/targets")).await;
    b.wait_text("#targets", "crm-c, ready", |t| {
        t.contains("crm-c") && t.contains("Ready: True")
    })
    .await;

    // An event the receiver refuses shows in the log as failed, with its answer.
    w.post_event(&w.client_c, "evt-console-c-1", "WVWZZZ1JZXW000301")
        .await;
    let first = w.receiver.wait_for("c", 1).await;
    assert_eq!(first[0].status, 400);
    assert!(
        first[0].headers.get("authorization").is_some(),
        "the form's Basic auth was not sent"
    );
    let log = format!("/console/#/log?target=webhooksubscription/{}/crm-c", w.ns_c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        b.goto(&w.url(&log)).await;
        let shown = b
            .wait_text("#log-entries", "a result", |t| !t.is_empty())
            .await;
        if shown.contains("evt-console-c-1") && shown.contains("failed") {
            assert!(shown.contains("400"), "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed delivery never showed: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("09-delivery-log-failed").await;

    // Retry it: the receiver takes it this time.
    b.click("#log tr[data-result=failed] button[data-retry]")
        .await;
    b.wait_text("#log tr[data-result=failed] .result", "queued", |t| {
        t.contains("queued again")
    })
    .await;
    let got = w.receiver.wait_for("c", 2).await;
    assert_eq!(got[1].status, 200);
    assert_eq!(got[1].body["id"], "evt-console-c-1");
    b.screenshot("10-delivery-log-retried").await;

    // The event page shows both attempts and the receiver's answers.
    let event = format!("/console/#/event/evt-console-c-1?client={}", w.client_c);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        b.goto(&w.url(&event)).await;
        let shown = b
            .wait_text("#main", "the event", |t| t.contains("Event"))
            .await;
        if shown.contains("delivered") && shown.contains("failed") {
            assert!(shown.contains("WVWZZZ1JZXW000301"), "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both attempts never showed: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    b.screenshot("11-event").await;

    // Send a test event from the targets page; the receiver's answer is shown.
    b.goto(&w.url("/console/#/targets")).await;
    let row = format!(
        "#targets tr[data-target='webhooksubscription/{}/crm-c']",
        w.ns_c
    );
    b.click(&format!("{row} summary")).await;
    b.click(&format!("{row} form[aria-label^='Send a test'] button"))
        .await;
    let answer = b
        .wait_text(&format!("{row} .result"), "the answer", |t| {
            t.contains("answer 200")
        })
        .await;
    assert!(answer.contains("delivered"), "{answer}");
    let got = w.receiver.wait_for("c", 3).await;
    assert!(
        got[2].body["id"]
            .as_str()
            .unwrap_or("")
            .starts_with("evt_test_"),
        "{:?}",
        got[2].body
    );
    b.screenshot("12-test-event").await;

    // Replay the last day from the same place: the stored event goes out again.
    let since = (k8s_openapi::jiff::Timestamp::now()
        - k8s_openapi::jiff::SignedDuration::from_hours(24))
    .strftime("%Y-%m-%dT%H:%M")
    .to_string();
    let replay = format!("{row} form[aria-label^='Replay events']");
    b.set_value(&format!("{replay} input[name=since]"), &since)
        .await;
    b.click(&format!("{replay} button")).await;
    let said = b
        .wait_text(&format!("{replay} + .result"), "the replay", |t| {
            t.contains("Replay started")
        })
        .await;
    assert!(said.contains("1 events queued"), "{said}");
    let got = w.receiver.wait_for("c", 4).await;
    assert_eq!(got[3].body["id"], "evt-console-c-1", "{:?}", got[3].body);
    b.screenshot("12b-replay").await;

    // Edit it: one more event type; the spec the form did not show is sent back unchanged.
    b.click(&format!("{row} a[href='#/webhook/crm-c']")).await;
    b.wait_css("#webhook-form input[name=name][readonly]").await;
    b.click("#webhook-form input[value='vehicle.deleted']")
        .await;
    b.click("#webhook-form button[type=submit]").await;
    b.wait_text("#webhook-form #form-result", "saved", |t| {
        t.contains("Saved crm-c")
    })
    .await;
    b.screenshot("13-webhook-edited").await;
    let (code, got) = w.get(DEALER_C, "/v1/self-service/webhooks/crm-c").await;
    assert_eq!(code, 200, "{got}");
    assert_eq!(
        got["spec"]["events"],
        json!(["vehicle.processed", "vehicle.deleted"]),
        "{got}"
    );
    assert_eq!(got["spec"]["url"], w.receiver.url("c").as_str());
    assert!(
        got["credentials"]
            .as_array()
            .is_some_and(|c| c.contains(&json!("basic"))),
        "the Basic auth set at creation was kept: {got}"
    );

    // Dealer A's token does not see dealer C's webhook.
    let (code, _) = w
        .get(DEALER_A, &format!("/v1/targets/whs/{}/crm-c", w.ns_c))
        .await;
    assert_eq!(code, 404);
    browser.close().await;
}

/// An FTP connection added through the console's form, with the naming rules previewed there,
/// uploads a vehicle's images to a real FTP server under exactly the previewed names.
#[tokio::test]
async fn console_adds_an_ftp_connection_that_uploads_as_previewed() {
    let w = world();
    let server = FtpServer::start("dealer-d", "ftp-s3cret")
        .await
        .expect("FTP server");
    let browser = Browser::start(1280, 900).await;
    let b = &browser;
    b.goto(&w.url("/console/")).await;
    b.fill("#signin input[name=token]", DEALER_D).await;
    b.click("#signin button[type=submit]").await;
    b.wait_css("#main h1").await;

    b.goto(&w.url("/console/#/ftp")).await;
    b.fill("#ftp-form input[name=name]", "dms-ftp").await;
    b.fill("#ftp-form input[name=host]", "127.0.0.1").await;
    b.fill("#ftp-form input[name=port]", &server.port().to_string())
        .await;
    b.fill("#ftp-form input[name=username]", "dealer-d").await;
    b.fill("#ftp-form input[name=password]", "ftp-s3cret").await;
    b.fill("#ftp-form input[name='rules.baseDirectory']", "incoming")
        .await;
    b.fill("#ftp-form input[name='rules.directory']", "{make}")
        .await;
    b.fill(
        "#ftp-form input[name='rules.fileName']",
        "{stock}-{index:02}.{ext}",
    )
    .await;
    b.fill("#ftp-form input[name='sample.make']", "Skoda").await;
    b.fill("#ftp-form input[name='sample.stock']", "D77").await;
    let names = b
        .wait_text("#preview-names", "the previewed names", |t| {
            t.contains("incoming/Skoda/D77-02.jpg")
        })
        .await;
    assert!(names.contains("incoming/Skoda/D77-01.jpg"), "{names}");
    b.click("#ftp-form button[type=submit]").await;
    b.wait_text("#ftp-form #form-result", "saved", |t| {
        t.contains("Saved dms-ftp")
    })
    .await;
    b.client
        .execute(
            "document.getElementById('preview').scrollIntoView({block: 'center'})",
            vec![],
        )
        .await
        .expect("scroll");
    b.screenshot("14-ftp-saved").await;

    // The operator logs in to the server with the form's credentials: Ready.
    w.wait_ready(DEALER_D, &format!("/v1/targets/ftpc/{}/dms-ftp", w.ns_d))
        .await;

    // A vehicle's images land under the previewed names.
    let images: Vec<Value> = (1..=2u8)
        .map(|n| {
            let url = w.receiver.serve_file(
                &format!("img/d/{n}.jpg"),
                &[0xff, 0xd8, 0xff, n],
                "image/jpeg",
            );
            json!({ "index": n, "url": url, "contentType": "image/jpeg" })
        })
        .collect();
    let r = reqwest::Client::new()
        .post(w.url("/v1/events"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(
            json!({ "id": "evt-console-d-1", "type": "vehicle.processed",
                "timestamp": "2026-11-27T10:15:30Z", "clientId": w.client_d, "userId": "u-1",
                "data": { "vehicle": { "id": "veh-d", "vin": "WVWZZZ1JZXW000401",
                    "stockNumber": "D77", "make": "Skoda" }, "images": images } })
            .to_string(),
        )
        .send()
        .await
        .expect("POST /v1/events");
    assert_eq!(r.status().as_u16(), 202);
    for n in 1..=2u8 {
        let path = server.path(&format!("/incoming/Skoda/D77-0{n}.jpg"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never uploaded",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            std::fs::read(&path).expect("uploaded file"),
            [0xff, 0xd8, 0xff, n]
        );
    }
    browser.close().await;
    server.stop().await;
}
