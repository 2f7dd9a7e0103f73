//! The dashboard over real HTTP, without a browser: sign-in and sessions,
//! CSRF refusals that change nothing, decisions made through the service's
//! own rules (roles, four-eyes), escaping of hostile text, the audit page's
//! filters and chain status, the SSE stream that drives live refresh, and
//! the consumers' pages with their dead-letter Retry.
//! (`tests/dashboard.rs` drives the same pages in headless Chromium.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, connect, pb};
use modelreg_server::settings::HttpListen;
use modelreg_tests::consumers::{dead_letters, park_dead_letter};
use modelreg_tests::{
    TestApp, TestDb, auc_gated, create_holdout, create_model, evaluate, get_version,
    last_event_of_type, register, spawn_app_with, update_policy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Who may sign in: name, role, token.
const PEOPLE: [(&str, &str, &str); 4] = [
    ("ada", "admin", "ada-token-0123456789"),
    ("alice", "publisher", "alice-token-0123456789"),
    ("bob", "approver", "bob-token-0123456789"),
    ("rita", "reader", "rita-token-0123456789"),
];

fn token(name: &str) -> &'static str {
    PEOPLE.iter().find(|p| p.0 == name).expect("a person").2
}

fn write_token_file(dir: &Path) -> std::path::PathBuf {
    write_token_file_without(dir, &[])
}

/// The token file of [`PEOPLE`] but `left_out`, written aside and renamed
/// into place (as before a SIGHUP), so the server never reads half of it.
fn write_token_file_without(dir: &Path, left_out: &[&str]) -> std::path::PathBuf {
    let text: String = PEOPLE
        .iter()
        .filter(|(name, _, _)| !left_out.contains(name))
        .map(|(name, role, token)| {
            format!(
                "[[tokens]]\nidentity = {name:?}\nroles = [{role:?}]\ntoken_sha256 = {:?}\n\n",
                modelreg_server::domain::audit::sha256_hex(token.as_bytes())
            )
        })
        .collect();
    let path = dir.join("tokens.toml");
    let aside = dir.join("tokens.toml.new");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, &path).unwrap();
    path
}

/// A server with the HTTP listener on, with tokens or in local mode.
async fn start(dir: Option<&Path>) -> TestApp {
    let tokens = dir.map(write_token_file);
    spawn_app_with(&TestDb::sqlite(), |s| {
        s.http_listen = HttpListen::On("127.0.0.1:0".parse().unwrap());
        s.auth_tokens = tokens;
    })
    .await
}

async fn grpc(app: &TestApp, who: &str, tokens: bool) -> RegistryClient {
    if tokens {
        connect(&ConnectOptions::new(app.url.clone()).token(token(who)))
            .await
            .expect("connect")
    } else {
        app.client_as(who).await
    }
}

/// `fraud`: standard set holdout@v1 (auc), gate auc ≥ 0.8; v1 in production
/// (approved by bob), v2 evaluated and requested for production by alice.
async fn arrange(app: &TestApp, tokens: bool) {
    let mut ada = grpc(app, "ada", tokens).await;
    create_holdout(&mut ada).await;
    ada.create_model(pb::CreateModelRequest {
        name: "fraud".into(),
        description: "Card fraud <script>alert('x')</script> scorer".into(),
        policy: Some(pb::Policy {
            reviewers: Some(pb::ReviewerList {
                reviewers: vec![
                    pb::Reviewer {
                        email: "bob@example.com".into(),
                        identity: "bob".into(),
                    },
                    pb::Reviewer {
                        email: "risk-team@example.com".into(),
                        identity: String::new(),
                    },
                ],
            }),
            ..auc_gated(0.8)
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut alice = grpc(app, "alice", tokens).await;
    let mut bob = grpc(app, "bob", tokens).await;
    for (version, auc) in [(1, 0.91), (2, 0.93)] {
        register(&mut alice, "fraud", pb::Stage::Staging).await;
        evaluate(&mut ada, "fraud", version, auc).await;
        let asked = alice
            .transition_stage(pb::TransitionStageRequest {
                model: "fraud".into(),
                version,
                target_stage: pb::Stage::Production as i32,
                comment: format!("ship v{version}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let id = asked.request.expect("a pending request").id;
        if version == 1 {
            bob.approve_transition(pb::ApproveTransitionRequest {
                request_id: id,
                comment: String::new(),
            })
            .await
            .unwrap();
        }
    }
}

/// One answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }

    /// The page's CSRF token (every form carries the same one).
    fn csrf(&self) -> String {
        let at = self
            .body
            .find("name=\"csrf\" value=\"")
            .unwrap_or_else(|| panic!("no CSRF field on the page:\n{}", self.body));
        let rest = &self.body[at + 19..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

/// A browser's worth of HTTP/1.1: one cookie jar, `Connection: close`.
struct Browser {
    addr: SocketAddr,
    /// The `Host` (and `Origin`) it sends: the address unless a test says
    /// otherwise; empty sends no `Host` at all.
    host: String,
    cookie: Option<String>,
}

impl Browser {
    fn new(addr: SocketAddr) -> Browser {
        Browser {
            addr,
            host: addr.to_string(),
            cookie: None,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, None, &[]).await
    }

    /// POSTs a form from this site's pages (Origin of this host).
    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        let origin = format!("http://{}", self.host);
        self.post_from(path, form, Some(&origin)).await
    }

    async fn post_from(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Answer {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut extra = vec![(
            "Content-Type".to_owned(),
            "application/x-www-form-urlencoded".to_owned(),
        )];
        if let Some(o) = origin {
            extra.push(("Origin".to_owned(), o.to_owned()));
        }
        self.send("POST", path, Some(body), &extra).await
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
        extra: &[(String, String)],
    ) -> Answer {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
        if !self.host.is_empty() {
            head.push_str(&format!("Host: {}\r\n", self.host));
        }
        if let Some(c) = &self.cookie {
            head.push_str(&format!("Cookie: modelreg_session={c}\r\n"));
        }
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).expect("UTF-8");
        let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        if let Some(set) = headers.get("set-cookie") {
            let value = set
                .split(';')
                .next()
                .and_then(|kv| kv.split_once('='))
                .map(|(_, v)| v.to_owned())
                .unwrap();
            self.cookie = (!value.is_empty()).then_some(value);
        }
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// Signs in with `who`'s token; returns the landing answer.
    async fn sign_in(&mut self, who: &str, next: &str) -> Answer {
        let form = self.get(&format!("/signin?next={}", encode(next))).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.csrf();
        let done = self
            .post(
                "/signin",
                &[("csrf", &csrf), ("next", next), ("token", token(who))],
            )
            .await;
        assert_eq!(done.status, 303, "{}", done.body);
        assert_eq!(done.header("location"), next);
        self.get(next).await
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn request_status(c: &mut RegistryClient, id: &str) -> i32 {
    c.list_transition_requests(pb::ListTransitionRequestsRequest {
        model: "fraud".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .requests
    .into_iter()
    .find(|r| r.id == id)
    .expect("the request")
    .status
}

async fn event_count(c: &mut RegistryClient) -> usize {
    modelreg_tests::all_events(c).await.len()
}

/// With tokens: sign-in rotates the session; forged or under-privileged
/// decisions are refused and write nothing; an approver's decision goes
/// through the service (four-eyes included) and shows on every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_decide_and_refuse_forgeries() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(Some(dir.path())).await;
    arrange(&app, true).await;
    let http = app.http_addr.unwrap();
    let mut ada = grpc(&app, "ada", true).await;

    // Not signed in: pages send you to the sign-in form, and back after it.
    let mut bob = Browser::new(http);
    let first = bob.get("/requests/fraud:2").await;
    assert_eq!(first.status, 303);
    assert_eq!(
        first.header("location"),
        "/signin?next=%2Frequests%2Ffraud%3A2"
    );
    let cookie = first.header("set-cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let anonymous = bob.cookie.clone().unwrap();

    // A wrong token, or a sign-in form without its CSRF token, signs no one in.
    let form = bob.get("/signin?next=/").await;
    let csrf = form.csrf();
    let wrong = bob
        .post(
            "/signin",
            &[("csrf", &csrf), ("next", "/"), ("token", "guess")],
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("not in the server&#39;s token file")
            || wrong.body.contains("not in the server's token file"),
        "{}",
        wrong.body
    );
    let forged = bob
        .post("/signin", &[("next", "/"), ("token", token("bob"))])
        .await;
    assert_eq!(forged.status, 403);
    assert_eq!(bob.get("/").await.status, 303, "still signed out");

    // Signing in issues a new session id; the one from before is worthless.
    let page = bob.sign_in("bob", "/requests/fraud:2").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_ne!(bob.cookie.as_deref(), Some(anonymous.as_str()));
    let mut planted = Browser::new(http);
    planted.cookie = Some(anonymous);
    assert_eq!(planted.get("/requests/fraud:2").await.status, 303);

    // The evidence: metrics beside production's, the gate, the buttons.
    assert!(page.body.contains("data-metric=\"auc\""), "{}", page.body);
    assert!(page.body.contains("0.93") && page.body.contains("0.91"));
    assert!(page.body.contains("class=\"gate pass\""));
    assert!(page.body.contains("value=\"approve\"") && page.body.contains("value=\"reject\""));
    let csrf = page.csrf();

    // Forgeries change nothing: no token, another session's token, another site.
    let before = event_count(&mut ada).await;
    let path = "/requests/fraud:2/decide";
    let none = bob.post(path, &[("decision", "approve")]).await;
    assert_eq!(none.status, 403, "{}", none.body);
    assert!(none.body.contains("CSRF"));
    let other = bob
        .post(path, &[("decision", "approve"), ("csrf", &"0".repeat(64))])
        .await;
    assert_eq!(other.status, 403);
    let cross = bob
        .post_from(
            path,
            &[("decision", "approve"), ("csrf", &csrf)],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(cross.status, 403);
    assert_eq!(event_count(&mut ada).await, before, "nothing was written");
    assert_eq!(
        request_status(&mut ada, "fraud:2").await,
        pb::TransitionRequestStatus::Pending as i32
    );

    // A reader sees everything and no buttons; a posted decision is refused
    // by the service's own role check.
    let mut rita = Browser::new(http);
    let seen = rita.sign_in("rita", "/requests/fraud:2").await;
    assert!(seen.body.contains("data-metric=\"auc\""));
    assert!(
        !seen.body.contains("value=\"approve\""),
        "no Approve for a reader"
    );
    assert!(seen.body.contains("needs the approver role"));
    let csrf_r = seen.csrf();
    let refused = rita
        .post(path, &[("decision", "approve"), ("csrf", &csrf_r)])
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(
        refused.body.contains("needs the approver role"),
        "{}",
        refused.body
    );
    assert_eq!(event_count(&mut ada).await, before);

    // The requester herself gets no buttons either (four-eyes).
    let mut alice = Browser::new(http);
    let own = alice.sign_in("alice", "/requests/fraud:2").await;
    assert!(!own.body.contains("value=\"approve\""));

    // Bob approves: the service moves v2 to production and records him.
    let done = bob
        .post(
            path,
            &[
                ("decision", "approve"),
                ("csrf", &csrf),
                ("comment", "checked <b>auc</b>"),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(
        done.body
            .contains("Approved: fraud version 2 is now in <strong>Production</strong>"),
        "{}",
        done.body
    );
    let v2 = get_version(&mut ada, "fraud", 2).await;
    assert_eq!(v2.stage, pb::Stage::Production as i32);
    let approval = last_event_of_type(&mut ada, pb::EventType::TransitionApproved).await;
    assert_eq!(approval.actor, "bob");
    assert_eq!(approval.comment, "checked <b>auc</b>");

    // Approving again is refused with the service's reason, changing nothing.
    let count = event_count(&mut ada).await;
    let again = bob
        .post(path, &[("decision", "approve"), ("csrf", &csrf)])
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("Not done"));
    assert_eq!(event_count(&mut ada).await, count);

    // The model page shows v2 in production; the audit page the approval,
    // escaped, with the chain verified; the actor filter keeps only bob.
    let model = bob.get("/models/fraud").await;
    assert!(model.body.contains("<tr data-version=\"2\"><td>v2</td><td class=\"stage\"><span class=\"stage production\">Production</span>"), "{}", model.body);
    assert!(model.body.contains("id=\"metric-chart\""));
    assert!(
        model.body.contains("bob@example.com (bob)")
            && model.body.contains("risk-team@example.com"),
        "the policy's reviewers are shown: {}",
        model.body
    );
    assert!(
        !model.body.contains("<script>alert"),
        "descriptions are escaped"
    );
    let audit = bob.get("/audit?model=fraud&actor=bob").await;
    assert!(
        audit.body.contains("id=\"chain\"") && audit.body.contains("class=\"verified\""),
        "{}",
        audit.body
    );
    assert!(audit.body.contains("data-type=\"TRANSITION_APPROVED\""));
    assert!(
        audit.body.contains("id=\"head\""),
        "the head to record is shown"
    );
    assert!(audit.body.contains("checked &lt;b&gt;auc&lt;/b&gt;"));
    let rows = audit.body.matches("<tr data-sequence=").count();
    assert!(rows >= 3, "{}", audit.body);
    assert_eq!(
        audit.body.matches("<td>bob</td>").count(),
        rows,
        "only bob's events"
    );
    assert_eq!(bob.get("/audit?type=NOPE").await.status, 400);

    // Signing out ends the session.
    let out = bob.post("/signout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, 303);
    assert_eq!(bob.get("/").await.status, 303);
    app.stop().await;
}

/// Without tokens the decision form names its actor, who is recorded; bad
/// names and decisions are refused and write nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_asks_who_is_acting() {
    let app = start(None).await;
    arrange(&app, false).await;
    let mut browser = Browser::new(app.http_addr.unwrap());
    let mut c = app.client_as("tester").await;

    let page = browser.get("/requests/fraud:2").await;
    assert_eq!(
        page.status, 200,
        "local mode needs no sign-in: {}",
        page.body
    );
    assert!(
        page.body.contains("name=\"actor\""),
        "the form asks who acts"
    );
    let csrf = page.csrf();
    let path = "/requests/fraud:2/decide";
    let before = event_count(&mut c).await;
    for bad in ["", "bj\u{f6}rn"] {
        let refused = browser
            .post(
                path,
                &[("decision", "approve"), ("csrf", &csrf), ("actor", bad)],
            )
            .await;
        assert_eq!(refused.status, 400, "{bad:?}: {}", refused.body);
    }
    let unknown = browser
        .post(
            path,
            &[("decision", "maybe"), ("csrf", &csrf), ("actor", "bob")],
        )
        .await;
    assert_eq!(unknown.status, 400);
    // The requester may not approve her own request: the service says so.
    let own = browser
        .post(
            path,
            &[("decision", "approve"), ("csrf", &csrf), ("actor", "alice")],
        )
        .await;
    assert_eq!(own.status, 409, "{}", own.body);
    assert_eq!(event_count(&mut c).await, before);

    let rejected = browser
        .post(
            path,
            &[
                ("decision", "reject"),
                ("csrf", &csrf),
                ("actor", "carol"),
                ("comment", "latency unknown"),
            ],
        )
        .await;
    assert_eq!(rejected.status, 200, "{}", rejected.body);
    assert!(
        rejected
            .body
            .contains("Rejected: fraud version 2 stays in <strong>Staging</strong>")
    );
    let events = modelreg_tests::all_events(&mut c).await;
    let last = events.last().unwrap();
    assert_eq!(last.r#type, pb::EventType::TransitionRejected as i32);
    assert_eq!(last.actor, "carol");
    assert_eq!(last.comment, "latency unknown");
    app.stop().await;
}

/// Unknown pages are 404, wrong methods 405, oversized forms 413; assets and
/// the security headers are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pages_methods_and_assets() {
    let app = start(None).await;
    arrange(&app, false).await;
    let mut b = Browser::new(app.http_addr.unwrap());
    assert_eq!(b.get("/models/nope").await.status, 404);
    assert_eq!(b.get("/requests/nope").await.status, 404);
    assert_eq!(b.get("/requests/fraud:99").await.status, 404);
    assert_eq!(b.get("/no/such/page").await.status, 404);
    assert_eq!(b.post("/", &[]).await.status, 405);
    assert_eq!(b.get("/requests/fraud:2/decide").await.status, 405);
    let css = b.get("/assets/style.css").await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));
    assert_eq!(b.get("/assets/nope.js").await.status, 404);
    let home = b.get("/").await;
    assert!(
        home.header("content-security-policy")
            .contains("default-src 'self'")
    );
    assert!(home.body.contains("data-model=\"fraud\""));
    assert!(
        home.body.contains("/requests/fraud:2"),
        "pending requests are listed"
    );
    // An oversized form is refused before it is read whole.
    let csrf = home.body.find("csrf").map(|_| home.csrf());
    let big = "x".repeat(70 * 1024);
    let too_big = b
        .post(
            "/requests/fraud:2/decide",
            &[("csrf", csrf.as_deref().unwrap_or("")), ("comment", &big)],
        )
        .await;
    assert_eq!(too_big.status, 413);
    app.stop().await;
}

/// `/events` streams new events as SSE, resuming after `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_feeds_live_refresh() {
    let app = start(None).await;
    arrange(&app, false).await;
    let http = app.http_addr.unwrap();
    let mut c = app.client_as("alice").await;
    let latest = modelreg_tests::all_events(&mut c)
        .await
        .last()
        .unwrap()
        .sequence;

    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!("GET /events?model=fraud&after={latest} HTTP/1.1\r\nHost: {http}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let v3 = register(&mut c, "fraud", pb::Stage::Staging).await;
    let seen = read_until(&mut stream, "\"type\":\"VERSION_REGISTERED\"").await;
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    assert!(
        seen.contains(&format!("\"version\":{}", v3.version)),
        "{seen}"
    );
    let id = latest + 1;
    assert!(seen.contains(&format!("id: {id}\n")), "{seen}");

    // A reconnect with Last-Event-ID resumes after it, not from `after`.
    let mut again = tokio::net::TcpStream::connect(http).await.unwrap();
    let req =
        format!("GET /events?after=0 HTTP/1.1\r\nHost: {http}\r\nLast-Event-ID: {id}\r\n\r\n");
    again.write_all(req.as_bytes()).await.unwrap();
    let resumed = read_until(&mut again, ": heartbeat").await;
    assert!(!resumed.contains(&format!("id: {id}\n")), "{resumed}");
    assert!(!resumed.contains("id: 1\n"), "{resumed}");
    assert!(
        resumed.contains(&format!("id: {}\n", id + 1)),
        "the stage change after it: {resumed}"
    );
    app.stop().await;
}

/// Sets fraud's gate to `auc >= min` (as the admin).
async fn set_auc_gate(ada: &mut RegistryClient, min: f64) {
    update_policy(ada, "fraud", auc_gated(min), "")
        .await
        .expect("set the gate");
}

/// The dashboard's Approve is the approval path of the one move rule: when
/// the gates fail at decision time it is refused exactly as ApproveTransition
/// is (409, the failing check named, the request still pending, nothing
/// written), and once they pass it applies with cause APPROVAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_decision_is_decided_like_an_rpc_approval() {
    // Arrange: fraud:2 (auc 0.93) waits; then the gate is raised to 0.95.
    let dir = tempfile::tempdir().unwrap();
    let app = start(Some(dir.path())).await;
    arrange(&app, true).await;
    let mut ada = grpc(&app, "ada", true).await;
    let mut bob_rpc = grpc(&app, "bob", true).await;
    set_auc_gate(&mut ada, 0.95).await;
    let mut bob = Browser::new(app.http_addr.unwrap());
    let page = bob.sign_in("bob", "/requests/fraud:2").await;
    let csrf = page.csrf();
    let before = event_count(&mut ada).await;

    // Act
    let refused = bob
        .post(
            "/requests/fraud:2/decide",
            &[("decision", "approve"), ("csrf", &csrf)],
        )
        .await;
    let rpc = bob_rpc
        .approve_transition(pb::ApproveTransitionRequest {
            request_id: "fraud:2".into(),
            comment: String::new(),
        })
        .await
        .expect_err("the RPC refuses too");
    let after_refusals = event_count(&mut ada).await;
    set_auc_gate(&mut ada, 0.8).await;
    let applied = bob
        .post(
            "/requests/fraud:2/decide",
            &[("decision", "approve"), ("csrf", &csrf)],
        )
        .await;

    // Assert
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert!(refused.body.contains("Not done"), "{}", refused.body);
    assert!(refused.body.contains("auc &gt;= 0.95"), "{}", refused.body);
    assert_eq!(rpc.code(), tonic::Code::FailedPrecondition);
    assert!(rpc.message().contains("auc >= 0.95"), "{rpc:?}");
    assert_eq!(after_refusals, before, "refusals write nothing");
    assert_eq!(applied.status, 200, "{}", applied.body);
    let moved = modelreg_tests::stage_changes(&mut ada, "fraud", 2).await;
    let last = moved.last().expect("v2 moved");
    assert_eq!(last.to_stage, pb::Stage::Production as i32);
    assert_eq!(last.cause, pb::StageChangeCause::Approval as i32);
    assert_eq!(last.actor, "bob");
}

/// Reads from `stream` until `needle` arrives; the deadline only bounds a broken run.
async fn read_until(stream: &mut tokio::net::TcpStream, needle: &str) -> String {
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !text.contains(needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended before {needle:?}: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_err()
    {
        panic!("gave up waiting for {needle:?}");
    }
    text
}

/// Sign-in targets (`next`) that must never take the browser off this site:
/// each is answered with `Location: /`. Part of the standing bad-input
/// campaign: add to it, never remove. Browsers strip tabs and newlines from
/// URLs, trim leading C0 controls and spaces, and read `\` as `/`, so each
/// of these could otherwise become `//evil.example`.
const OFF_SITE_TARGETS: &[&str] = &[
    // The reported case: `next=%2F%09%2Fevil.example%2Fphish`, decoded.
    "/\t/evil.example/phish",
    "/\t\t/evil.example",
    "/\r/evil.example",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "/\0/evil.example",
    "/\x0b/evil.example",
    "/\x0c/evil.example",
    "/\x1b/evil.example",
    "/\x7f/evil.example",
    "/\u{85}/evil.example",
    "/\u{2028}/evil.example",
    "/ /evil.example",
    "/\r\nSet-Cookie: modelreg_session=planted",
    // Controls and spaces before the slashes.
    "\t//evil.example",
    "\n//evil.example",
    "\0//evil.example",
    " //evil.example",
    " /evil.example",
    // Scheme-relative.
    "//evil.example",
    "//evil.example/phish",
    "///evil.example",
    "////evil.example",
    "//\tevil.example",
    "//127.0.0.1@evil.example",
    // Backslashes, which browsers read as slashes.
    "/\\evil.example",
    "/\\/evil.example",
    "/\\\\evil.example",
    "\\\\evil.example",
    "\\/evil.example",
    "\\evil.example",
    "/requests\\..\\..\\\\evil.example",
    // Absolute URLs and other schemes.
    "https://evil.example/phish",
    "http://evil.example",
    "HTTPS://evil.example",
    "http:evil.example",
    "https:/evil.example",
    "http:\\\\evil.example",
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    // Not path-absolute at all.
    "evil.example",
    "evil.example/phish",
    "%2F%2Fevil.example",
    "",
    "\u{ff0f}\u{ff0f}evil.example",
    "/\u{ff0f}evil.example",
];

/// Sign-in targets that are paths of this site, which sign-in must keep.
const ON_SITE_TARGETS: &[&str] = &[
    "/",
    "/requests/fraud:2",
    "/models/fraud?metric=auc",
    "/audit?model=fraud&actor=bob",
    // Escaped text stays text: still a path here.
    "/%09/evil.example",
    "/%2F%2Fevil.example",
    "/%5Cevil.example",
    "/@evil.example",
];

/// The value of the sign-in form's hidden `next` field.
fn next_field(page: &Answer) -> String {
    let at = page
        .body
        .find("name=\"next\" value=\"")
        .unwrap_or_else(|| panic!("no next field on the page:\n{}", page.body));
    let rest = &page.body[at + 19..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// Sign-in sends the browser to `next` only when it is a path of this site
/// (one leading `/`, visible ASCII, no backslash); every other target, from
/// the query or the form, becomes `/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_redirect_after_sign_in() {
    // Arrange
    let app = start(None).await;
    let mut b = Browser::new(app.http_addr.unwrap());

    for target in OFF_SITE_TARGETS {
        // Act
        let form = b.get(&format!("/signin?next={}", encode(target))).await;
        assert_eq!(form.status, 200, "{target:?}: {}", form.body);
        let csrf = form.csrf();
        let done = b
            .post(
                "/signin",
                &[("csrf", &csrf), ("next", target), ("actor", "carol")],
            )
            .await;

        // Assert
        assert_eq!(next_field(&form), "/", "the form kept {target:?}");
        assert_eq!(done.status, 303, "{target:?}: {}", done.body);
        assert_eq!(done.header("location"), "/", "signed in towards {target:?}");
    }
    for target in ON_SITE_TARGETS {
        let form = b.get(&format!("/signin?next={}", encode(target))).await;
        let done = b
            .post(
                "/signin",
                &[("csrf", &form.csrf()), ("next", target), ("actor", "carol")],
            )
            .await;
        assert_eq!(done.status, 303, "{target:?}: {}", done.body);
        assert_eq!(done.header("location"), *target, "a path of this site");
    }
    app.stop().await;
}

/// A sign-in that survives anything anonymous visitors do: more cookie-less
/// requests than the session table ever held do not sign anyone out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_flood_does_not_sign_anyone_out() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let app = start(Some(dir.path())).await;
    let http = app.http_addr.unwrap();
    let mut bob = Browser::new(http);
    assert_eq!(bob.sign_in("bob", "/").await.status, 200);

    // Act: 10,050 sign-in pages, without a cookie, over one connection
    // (the old table held 10,000 sessions).
    let answered = flood(http, "/signin", 10_050).await;

    // Assert
    assert_eq!(answered, 10_050, "every flood request was answered");
    let after = bob.get("/").await;
    assert_eq!(after.status, 200, "bob is still signed in: {}", after.body);
    app.stop().await;
}

/// Sends `n` cookie-less GETs of `path` pipelined on one keep-alive
/// connection; returns how many were answered 200.
async fn flood(addr: SocketAddr, path: &str, n: usize) -> usize {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let one = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let last = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let writer = tokio::spawn(async move {
        let batch = one.repeat(100);
        for _ in 0..(n - 1) / 100 {
            wr.write_all(batch.as_bytes()).await.unwrap();
        }
        wr.write_all(one.repeat((n - 1) % 100).as_bytes())
            .await
            .unwrap();
        wr.write_all(last.as_bytes()).await.unwrap();
        wr
    });
    let mut raw = Vec::new();
    rd.read_to_end(&mut raw).await.unwrap();
    drop(writer.await.unwrap());
    String::from_utf8_lossy(&raw)
        .matches("HTTP/1.1 200 OK\r\n")
        .count()
}

/// A token removed from the token file (SIGHUP) ends the streams opened
/// with it: WatchTransitions with UNAUTHENTICATED before any later event,
/// the dashboard's `/events` by closing.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_ends_open_streams() {
    // Arrange
    let _hangups = modelreg_tests::catch_hangups();
    let dir = tempfile::tempdir().unwrap();
    let app = start(Some(dir.path())).await;
    let http = app.http_addr.unwrap();
    let mut ada = grpc(&app, "ada", true).await;
    ada.create_model(pb::CreateModelRequest {
        name: "fraud".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut rita = grpc(&app, "rita", true).await;
    let mut watch = rita
        .watch_transitions(pb::WatchTransitionsRequest::default())
        .await
        .expect("rita may watch")
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(
        matches!(
            first.kind,
            Some(pb::watch_transitions_response::Kind::Heartbeat(_))
        ),
        "the stream opens with a heartbeat: {first:?}"
    );
    let mut browser = Browser::new(http);
    assert_eq!(browser.sign_in("rita", "/").await.status, 200);
    let mut sse = tokio::net::TcpStream::connect(http).await.unwrap();
    let req = format!(
        "GET /events HTTP/1.1\r\nHost: {http}\r\nCookie: modelreg_session={}\r\nConnection: close\r\n\r\n",
        browser.cookie.as_deref().unwrap()
    );
    sse.write_all(req.as_bytes()).await.unwrap();
    let opened = read_until(&mut sse, ": heartbeat").await;
    assert!(opened.starts_with("HTTP/1.1 200"), "{opened}");

    // Act: rita's token leaves the file; then alice causes an event.
    write_token_file_without(dir.path(), &["rita"]);
    modelreg_tests::send_hangup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe = rita.list_models(pb::ListModelsRequest::default()).await;
        match probe {
            Err(s) if s.code() == tonic::Code::Unauthenticated => break,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the token file was never reloaded"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    let mut alice = grpc(&app, "alice", true).await;
    let v1 = register(&mut alice, "fraud", pb::Stage::None).await;
    assert_eq!(v1.version, 1);

    // Assert: the gRPC stream ends UNAUTHENTICATED, without the event.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.message().await {
                Ok(Some(m)) => {
                    if let Some(pb::watch_transitions_response::Kind::Event(e)) = m.kind {
                        panic!("a revoked token's stream delivered {e:?}");
                    }
                }
                Ok(None) => panic!("the stream ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the revoked token's watch stream stayed open");
    assert_eq!(ended.code(), tonic::Code::Unauthenticated, "{ended:?}");

    // Assert: the SSE response ends (the connection closes) without the event.
    let mut rest = String::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let n = sse.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            rest.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await;
    assert!(
        !rest.contains("VERSION_REGISTERED"),
        "a revoked token's /events delivered the event: {rest}"
    );
    assert!(
        closed.is_ok(),
        "the revoked token's /events stayed open: {rest}"
    );
    app.stop().await;
}

/// Local mode answers only requests addressed to this machine: a page whose
/// name re-binds to 127.0.0.1 (DNS rebinding) sends its own name as `Host`
/// and is refused with 421 before anything is read or written, on every
/// path; loopback names and `--public-url`'s host are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_rebinding_host_is_refused_in_local_mode() {
    // Arrange
    let app = start(None).await;
    arrange(&app, false).await;
    let http = app.http_addr.unwrap();
    let port = http.port();
    let mut c = app.client_as("tester").await;
    let mut home = Browser::new(http);
    let csrf = home.get("/requests/fraud:2").await.csrf();
    let before = event_count(&mut c).await;
    let decide = "/requests/fraud:2/decide";
    // A complete form, which would be recorded if it got through.
    let form = [
        ("decision", "reject"),
        ("csrf", &csrf),
        ("actor", "mallory"),
        ("comment", "re-bound"),
    ];

    for host in [
        format!("evil.example:{port}"),
        "evil.example".to_owned(),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("0.0.0.0:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1).max(1)),
        format!("localhost:{port}0"),
        String::new(),
    ] {
        // Act: the rebinding page's requests, with the session's cookie
        // (the worst case: a browser that sent it).
        let mut evil = Browser::new(http);
        evil.host = host.clone();
        evil.cookie = home.cookie.clone();
        let page = evil.get("/requests/fraud:2").await;
        let post = evil.post(decide, &form).await;

        // Assert
        assert_eq!(page.status, 421, "GET with Host {host:?}: {}", page.body);
        assert!(!page.body.contains(&csrf), "the CSRF token leaked");
        assert_eq!(post.status, 421, "POST with Host {host:?}: {}", post.body);
        for path in ["/", "/events", "/metrics", "/signin", "/audit"] {
            assert_eq!(
                evil.get(path).await.status,
                421,
                "{path} with Host {host:?}"
            );
        }
    }
    assert_eq!(event_count(&mut c).await, before, "nothing was written");
    assert_eq!(
        request_status(&mut c, "fraud:2").await,
        pb::TransitionRequestStatus::Pending as i32
    );

    // Loopback names of this listener work, with its port or none.
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
        "localhost".to_owned(),
        format!("127.1.2.3:{port}"),
        format!("[::1]:{port}"),
    ] {
        let mut local = Browser::new(http);
        local.host = host.clone();
        let page = local.get("/requests/fraud:2").await;
        assert_eq!(page.status, 200, "Host {host:?}: {}", page.body);
        assert_eq!(local.get("/metrics").await.status, 200, "Host {host:?}");
    }
    let mut local = Browser::new(http);
    local.host = format!("localhost:{port}");
    let csrf = local.get("/requests/fraud:2").await.csrf();
    let done = local
        .post(
            decide,
            &[
                ("decision", "reject"),
                ("csrf", &csrf),
                ("actor", "carol"),
                ("comment", "from localhost"),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    app.stop().await;

    // With --public-url, its host is served too (and still nothing else).
    let public = spawn_app_with(&TestDb::sqlite(), |s| {
        s.http_listen = HttpListen::On("127.0.0.1:0".parse().unwrap());
        s.public_url =
            Some(modelreg_server::settings::parse_public_url("http://registry.test").unwrap());
    })
    .await;
    let mut proxied = Browser::new(public.http_addr.unwrap());
    for (host, status) in [
        ("registry.test", 200),
        ("registry.test:80", 200),
        ("REGISTRY.test", 200),
        ("registry.test:8080", 421),
        ("evil.example", 421),
    ] {
        proxied.host = host.to_owned();
        let page = proxied.get("/").await;
        assert_eq!(page.status, status, "Host {host:?}: {}", page.body);
    }
    public.stop().await;
}

/// The text of the first cell marked `data-field="NAME"` after `from` in `body`.
fn field_after<'a>(body: &'a str, from: &str, name: &str) -> &'a str {
    let start = body
        .find(from)
        .unwrap_or_else(|| panic!("no {from:?} on the page:\n{body}"));
    let rest = &body[start..];
    let at = rest
        .find(&format!("data-field=\"{name}\""))
        .unwrap_or_else(|| panic!("no {name} cell after {from:?}:\n{body}"));
    let cell = &rest[at..];
    let open = cell.find('>').unwrap() + 1;
    let close = cell.find("</td>").unwrap();
    &cell[open..close]
}

/// The Consumers pages: the list shows a consumer's filter, live members,
/// lag and parked dead letters; its page shows members, assignments and
/// dead letters, escaped. A reader sees no Retry and a reader's Retry POST
/// is 403 and changes nothing, as does a forged one; an approver's Retry
/// moves the dead letter to RETRYING, with the approver as the actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_pages_show_dead_letters_that_approvers_retry() {
    // Arrange: deploy-prod reads churn's registrations; v1 is parked with a
    // hostile reason and v2 waits behind it (lag 2).
    let dir = tempfile::tempdir().unwrap();
    let app = start(Some(dir.path())).await;
    let http = app.http_addr.unwrap();
    let mut ada = grpc(&app, "ada", true).await;
    create_model(&mut ada, "churn").await;
    let reason = "rollout failed: <script>alert('dl')</script>";
    let (_member, parked) = park_dead_letter(&mut ada, "deploy-prod", "churn", reason).await;
    register(&mut ada, "churn", pb::Stage::None).await;
    let retry_path = "/consumers/deploy-prod/retry";
    let row = format!("data-sequence=\"{parked}\"");

    // Act + Assert: the list, as a reader.
    let mut rita = Browser::new(http);
    let list = rita.sign_in("rita", "/consumers").await;
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(list.body.contains("href=\"/consumers\""), "nav link");
    let at = "data-consumer=\"deploy-prod\"";
    assert_eq!(field_after(&list.body, at, "lag"), "2");
    assert_eq!(field_after(&list.body, at, "members"), "1");
    assert_eq!(field_after(&list.body, at, "dead-letters"), "1");
    assert!(
        list.body.contains("types: VERSION_REGISTERED"),
        "{}",
        list.body
    );

    // The consumer's page: member, assignment, the dead letter escaped, no Retry.
    let page = rita.get("/consumers/deploy-prod").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("data-member=\"m1\""), "{}", page.body);
    assert!(page.body.contains("<td>ada</td>"), "the member's identity");
    assert!(page.body.contains("data-model=\"churn\""));
    let blocked = field_after(&page.body, "data-model=\"churn\"", "blocked");
    assert!(blocked.contains("blocked"), "{blocked}");
    assert_eq!(field_after(&page.body, &row, "state"), "Parked");
    assert!(!page.body.contains("<script>alert"), "{}", page.body);
    assert!(page.body.contains("&lt;script&gt;alert("), "{}", page.body);
    assert!(!page.body.contains(retry_path), "no Retry for a reader");
    assert!(page.body.contains("needs the approver role"));

    // A reader's POST is refused by the role check and writes nothing.
    let before = event_count(&mut ada).await;
    let sequence = parked.to_string();
    let refused = rita
        .post(
            retry_path,
            &[("csrf", &page.csrf()), ("sequence", &sequence)],
        )
        .await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("needs the approver role"));

    // An approver's page has Retry; without the CSRF token it does nothing.
    let mut bob = Browser::new(http);
    let page = bob.sign_in("bob", "/consumers/deploy-prod").await;
    assert!(page.body.contains(retry_path), "{}", page.body);
    let forged = bob.post(retry_path, &[("sequence", &sequence)]).await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert_eq!(event_count(&mut ada).await, before, "nothing was written");
    let state = |d: &[pb::DeadLetter]| d.iter().map(|d| d.state).collect::<Vec<_>>();
    let parked_state = vec![pb::DeadLetterState::Parked as i32];
    assert_eq!(
        state(&dead_letters(&mut ada, "deploy-prod").await),
        parked_state
    );

    // Bob's Retry goes through RetryDeadLetter's use case, as bob.
    let done = bob
        .post(
            retry_path,
            &[("csrf", &page.csrf()), ("sequence", &sequence)],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Retrying"), "{}", done.body);
    let retrying = vec![pb::DeadLetterState::Retrying as i32];
    assert_eq!(
        state(&dead_letters(&mut ada, "deploy-prod").await),
        retrying
    );
    let retried = last_event_of_type(&mut ada, pb::EventType::DeadLetterRetried).await;
    assert_eq!(retried.actor, "bob");
    let after = bob.get("/consumers/deploy-prod").await;
    assert_eq!(field_after(&after.body, &row, "state"), "Retrying");
    assert!(!after.body.contains(retry_path), "nothing left to retry");

    // Retrying it again is the use case's refusal, shown with its status.
    let again = bob
        .post(
            retry_path,
            &[("csrf", &page.csrf()), ("sequence", &sequence)],
        )
        .await;
    assert_eq!(again.status, 409, "{}", again.body);
}
