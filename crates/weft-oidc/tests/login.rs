//! Interactive login end to end, against a real OpenID Connect provider we did not write
//! (panva/oidc-provider, `tests/idp/idp.mjs`, on 127.0.0.1) and an in-process weft-control
//! server configured with `oidc` (its public router serves the login pages), reached over
//! ts2021, with the login driven like a person in a browser: an HTTP
//! client with a cookie jar that follows redirects and submits the provider's forms.
//!
//! Needs `node` and the provider installed by `scripts/setup-oidc-idp.sh` (run here once if
//! npm is available and it is missing). Without them the tests print SKIP, except with `CI`
//! set, where they fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use weft_control::{Control, ControlConfig};
use weft_key::{MachinePrivate, NodePrivate};
use weft_oidc::{OidcConfig, OidcProvider};
use weft_store::Store;
use weft_tailcfg::{Hostinfo, RegisterRequest, RegisterResponse};
use weft_ts2021::Ts2021Client;

const CAPVER: u16 = 130;
const WAIT: Duration = Duration::from_secs(20);

fn idp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/idp")
}

fn has_program(name: &str) -> bool {
    std::process::Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the provider with `scripts/setup-oidc-idp.sh` (npm ci of the pinned lock file)
/// if node and npm are there but it is not installed yet; once per test binary.
fn install_idp_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if idp_dir().join("node_modules/oidc-provider").is_dir() || !has_program("npm") {
            return;
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/setup-oidc-idp.sh");
        let ok = std::process::Command::new("bash")
            .arg(script)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("scripts/setup-oidc-idp.sh failed");
        }
    });
}

/// Whether the provider can run here; panics under CI when it cannot.
fn idp_available() -> bool {
    let has_node = has_program("node");
    if has_node {
        install_idp_once();
    }
    let installed = idp_dir().join("node_modules/oidc-provider").is_dir();
    if has_node && installed {
        return true;
    }
    let why = if has_node {
        "the test IdP is not installed (run scripts/setup-oidc-idp.sh)"
    } else {
        "node is not installed"
    };
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI must run the OIDC login tests");
    }
    eprintln!("SKIP: {why}");
    false
}

/// The provider process; killed when dropped.
struct Idp {
    issuer: String,
    _child: tokio::process::Child,
}

async fn start_idp(redirect_uri: &str) -> Idp {
    let mut child = tokio::process::Command::new("node")
        .arg("idp.mjs")
        .current_dir(idp_dir())
        .env("IDP_REDIRECT_URI", redirect_uri)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning node");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let issuer = timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(iss) = line.strip_prefix("ISSUER ") {
                return iss.to_string();
            }
        }
        panic!("the IdP exited before printing its issuer");
    })
    .await
    .expect("the IdP did not start in time");
    // Keep reading, so the provider never writes into a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Idp {
        issuer,
        _child: child,
    }
}

struct Env {
    url: String,
    control: Control,
    store: Arc<dyn Store>,
    idp: Idp,
    _dir: tempfile::TempDir,
}

async fn start(tweak: impl FnOnce(&mut OidcConfig)) -> Env {
    start_with(tweak, |_| {}).await
}

async fn start_with(
    tweak: impl FnOnce(&mut OidcConfig),
    tweak_control: impl FnOnce(&mut ControlConfig),
) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = weft_store::open(&weft_store::sqlite_url_for_dir(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let idp = start_idp(&format!("{url}/oidc/callback")).await;
    let mut cfg = OidcConfig::new(&idp.issuer, "weft", Some("weft-test-secret"));
    cfg.scopes = ["openid", "profile", "email", "groups"]
        .into_iter()
        .map(String::from)
        .collect();
    cfg.allowed_domains = vec!["example.com".into()];
    tweak(&mut cfg);
    // The configuration must be usable: discovery succeeds against the provider.
    OidcProvider::discover(cfg.clone(), &url).await.unwrap();
    let mut ccfg = ControlConfig::new(&url);
    ccfg.oidc = Some(cfg);
    tweak_control(&mut ccfg);
    let control = Control::new(ccfg, store.clone()).await.unwrap();
    let app = control.public_router(None);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Env {
        url,
        control,
        store,
        idp,
        _dir: dir,
    }
}

/// A node without an auth key, talking ts2021 to the server.
struct Device {
    client: Ts2021Client,
    node: NodePrivate,
}

impl Device {
    async fn connect(env: &Env) -> Device {
        let server = weft_ts2021::fetch_server_key(&env.url, CAPVER)
            .await
            .unwrap();
        let client = weft_ts2021::dial(&env.url, &MachinePrivate::generate(), server, CAPVER)
            .await
            .unwrap();
        Device {
            client,
            node: NodePrivate::generate(),
        }
    }

    fn request(&self, followup: &str) -> RegisterRequest {
        RegisterRequest {
            version: CAPVER as i64,
            node_key: self.node.public(),
            followup: followup.to_string(),
            hostinfo: Some(Hostinfo::new().with_hostname("laptop")),
            ..RegisterRequest::default()
        }
    }

    /// Registers without an auth key: returns the AuthURL, and the follow-up request
    /// (running, held by the server until the login completes).
    async fn begin(&self) -> (String, JoinHandle<RegisterResponse>) {
        let r = register(&self.client, &self.request("")).await;
        assert_eq!(r.error, "");
        assert!(!r.auth_url.is_empty(), "no AuthURL: {r:?}");
        let client = self.client.clone();
        let follow = self.request(&r.auth_url);
        let pending = tokio::spawn(async move { register(&client, &follow).await });
        (r.auth_url, pending)
    }
}

async fn register(client: &Ts2021Client, req: &RegisterRequest) -> RegisterResponse {
    let resp = client.post_json("/machine/register", req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = weft_ts2021::read_body(resp, 1 << 20).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// A browser: cookie jar, redirects followed by hand so a test can stop at (and tamper
/// with) the provider's authorization URL or the callback URL.
struct Browser {
    http: reqwest::Client,
}

#[derive(Debug)]
struct Page {
    url: Url,
    status: u16,
    body: String,
}

enum Step {
    Page(Page),
    Stopped(Url),
}

impl Step {
    fn page(self) -> Page {
        match self {
            Step::Page(p) => p,
            Step::Stopped(u) => panic!("stopped at {u} instead of showing a page"),
        }
    }

    fn stopped(self) -> Url {
        match self {
            Step::Stopped(u) => u,
            Step::Page(p) => panic!("got a page instead of a redirect: {p:?}"),
        }
    }
}

fn is_callback(u: &Url) -> bool {
    u.path() == "/oidc/callback"
}

fn is_authorize(u: &Url) -> bool {
    u.path() == "/auth"
}

fn never(_: &Url) -> bool {
    false
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(WAIT)
                .build()
                .unwrap(),
        }
    }

    async fn go(
        &self,
        url: Url,
        form: Option<Vec<(String, String)>>,
        stop: fn(&Url) -> bool,
    ) -> Step {
        let mut url = url;
        let mut form = form;
        for _ in 0..20 {
            let req = match form.take() {
                Some(f) => self.http.post(url.clone()).form(&f),
                None => self.http.get(url.clone()),
            };
            let resp = req.send().await.unwrap();
            let status = resp.status();
            if status.is_redirection() {
                let loc = resp.headers()["location"].to_str().unwrap().to_string();
                let next = url.join(&loc).unwrap();
                if stop(&next) {
                    return Step::Stopped(next);
                }
                url = next;
                continue;
            }
            return Step::Page(Page {
                url,
                status: status.as_u16(),
                body: resp.text().await.unwrap(),
            });
        }
        panic!("too many redirects");
    }

    async fn get(&self, url: &str, stop: fn(&Url) -> bool) -> Step {
        self.go(Url::parse(url).unwrap(), None, stop).await
    }

    /// Submits the page's (first) form with `fields`.
    async fn submit(&self, page: &Page, fields: &[(&str, &str)], stop: fn(&Url) -> bool) -> Step {
        let action = attr_after(&page.body, "<form", "action").expect("page has a form");
        let target = page.url.join(&action).unwrap();
        let form = fields
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.go(target, Some(form), stop).await
    }

    /// Opens the AuthURL and signs in at the provider until it redirects back to our
    /// callback, which is returned unvisited. `tamper` may rewrite the authorization URL.
    async fn login_until_callback(
        &self,
        auth_url: &str,
        email: &str,
        password: &str,
        tamper: impl FnOnce(Url) -> Url,
    ) -> Url {
        let authorize = self.get(auth_url, is_authorize).await.stopped();
        let login = self.go(tamper(authorize), None, is_callback).await.page();
        assert_eq!(login.status, 200, "{}", login.body);
        assert!(login.body.contains("name=\"password\""), "{}", login.body);
        let step = self
            .submit(
                &login,
                &[("login", email), ("password", password)],
                is_callback,
            )
            .await;
        let consent = match step {
            Step::Stopped(cb) => return cb,
            Step::Page(p) => p,
        };
        assert!(consent.body.contains("Authorize"), "{}", consent.body);
        self.submit(&consent, &[], is_callback).await.stopped()
    }

    async fn login(&self, auth_url: &str, email: &str, password: &str) -> Page {
        let cb = self
            .login_until_callback(auth_url, email, password, |u| u)
            .await;
        self.go(cb, None, never).await.page()
    }
}

/// The value of attribute `name` in the first tag starting with `tag`.
fn attr_after(html: &str, tag: &str, name: &str) -> Option<String> {
    let start = html.find(tag)?;
    let rest = &html[start..];
    let end = rest.find('>')?;
    let tag_text = &rest[..end];
    let key = format!("{name}=\"");
    let a = tag_text.find(&key)? + key.len();
    let b = tag_text[a..].find('"')? + a;
    Some(tag_text[a..b].replace("&amp;", "&"))
}

fn with_query(mut u: Url, key: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == key {
                value.to_string()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    u.query_pairs_mut().clear().extend_pairs(pairs);
    u
}

async fn nothing_registered(env: &Env, auth_url: &str) {
    assert!(env.store.list_nodes().await.unwrap().is_empty());
    let auth_id = auth_url.rsplit('/').next().unwrap();
    let s = env.store.get_session(auth_id).await.unwrap();
    assert_eq!(s.completed_user_id, None);
}

#[tokio::test]
async fn login_at_a_real_provider_registers_the_node_under_the_users_identity_with_groups() {
    if !idp_available() {
        return;
    }
    let env = start(|_| {}).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    assert!(auth_url.starts_with(&format!("{}/register/", env.url)));

    let page = Browser::new()
        .login(&auth_url, "alice@example.com", "alice-password")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Login successful"), "{}", page.body);
    assert!(page.body.contains("alice@example.com"), "{}", page.body);

    let r = timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(r.error, "");
    assert!(r.machine_authorized);
    assert_eq!(r.auth_url, "");
    assert_eq!(r.login.login_name, "alice@example.com");

    let user = env
        .store
        .get_user_by_name("alice@example.com")
        .await
        .unwrap();
    assert_eq!(user.provider, "oidc");
    assert_eq!(
        user.provider_subject.as_deref(),
        Some(format!("{}#u-alice-0001", env.idp.issuer).as_str())
    );
    assert_eq!(user.groups, vec!["admins", "engineering"]);
    assert_eq!(user.display_name, "Alice Example");
    assert_eq!(r.user.id, user.id.0);
    let node = env
        .store
        .get_node_by_node_key(&dev.node.public())
        .await
        .unwrap();
    assert_eq!(node.user_id, user.id);
    assert!(env.control.hub().snapshot().nodes.contains_key(&node.id.0));

    // A second device of the same person logs in: same user, refreshed, second node.
    let dev2 = Device::connect(&env).await;
    let (auth_url2, pending2) = dev2.begin().await;
    let page = Browser::new()
        .login(&auth_url2, "alice@example.com", "alice-password")
        .await;
    assert!(page.body.contains("Login successful"), "{}", page.body);
    let r2 = timeout(WAIT, pending2).await.unwrap().unwrap();
    assert_eq!(r2.user.id, user.id.0);
    assert_eq!(env.store.list_users().await.unwrap().len(), 1);
    assert_eq!(
        env.store.list_nodes_by_user(user.id).await.unwrap().len(),
        2
    );
}

#[tokio::test]
async fn a_user_outside_the_allowed_domains_gets_an_error_page_and_nothing_is_registered() {
    if !idp_available() {
        return;
    }
    let env = start(|_| {}).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let page = Browser::new()
        .login(&auth_url, "mallory@elsewhere.test", "mallory-password")
        .await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("Login failed"), "{}", page.body);
    assert!(
        page.body
            .contains("accounts in the domain elsewhere.test are not allowed"),
        "{}",
        page.body
    );
    nothing_registered(&env, &auth_url).await;
    assert!(env.store.list_users().await.unwrap().is_empty());
    assert!(!pending.is_finished());
    pending.abort();
}

#[tokio::test]
async fn a_user_outside_the_allowed_groups_or_with_an_unverified_email_is_refused() {
    if !idp_available() {
        return;
    }
    let env = start(|c| c.allowed_groups = vec!["engineering".into()]).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let page = Browser::new()
        .login(&auth_url, "carol@example.com", "carol-password")
        .await;
    assert_eq!(page.status, 403);
    assert!(
        page.body.contains("none of your groups is allowed"),
        "{}",
        page.body
    );
    nothing_registered(&env, &auth_url).await;
    pending.abort();

    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let page = Browser::new()
        .login(&auth_url, "dave@example.com", "dave-password")
        .await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("is not verified"), "{}", page.body);
    nothing_registered(&env, &auth_url).await;
    assert!(env.store.list_users().await.unwrap().is_empty());
    pending.abort();
}

#[tokio::test]
async fn a_replayed_callback_or_code_is_refused() {
    if !idp_available() {
        return;
    }
    let env = start(|_| {}).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let browser = Browser::new();
    let cb = browser
        .login_until_callback(&auth_url, "alice@example.com", "alice-password", |u| u)
        .await;
    let first = browser.go(cb.clone(), None, never).await.page();
    assert!(first.body.contains("Login successful"), "{}", first.body);
    timeout(WAIT, pending).await.unwrap().unwrap();

    // The same callback again: the login was consumed.
    let again = browser.go(cb.clone(), None, never).await.page();
    assert_eq!(again.status, 400);
    assert!(again.body.contains("already used"), "{}", again.body);

    // The used code with a fresh login's state (and cookie): the provider refuses it.
    let dev2 = Device::connect(&env).await;
    let (auth_url2, pending2) = dev2.begin().await;
    let authorize = browser.get(&auth_url2, is_authorize).await.stopped();
    let state2 = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let forged = with_query(cb, "state", &state2);
    let page = browser.go(forged, None, never).await.page();
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("already used or has expired"),
        "{}",
        page.body
    );
    // Only the first device is registered; the second session is still pending.
    assert_eq!(env.store.list_nodes().await.unwrap().len(), 1);
    let auth_id2 = auth_url2.rsplit('/').next().unwrap();
    let s = env.store.get_session(auth_id2).await.unwrap();
    assert_eq!(s.completed_user_id, None);
    pending2.abort();
}

#[tokio::test]
async fn a_wrong_state_or_a_foreign_browser_is_refused() {
    if !idp_available() {
        return;
    }
    let env = start(|_| {}).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let browser = Browser::new();
    let cb = browser
        .login_until_callback(&auth_url, "alice@example.com", "alice-password", |u| u)
        .await;

    let wrong = with_query(cb.clone(), "state", "not-the-state");
    let page = browser.go(wrong, None, never).await.page();
    assert_eq!(page.status, 400);
    assert!(
        page.body.contains("already used or is not known"),
        "{}",
        page.body
    );

    // The right callback opened in another browser (an attacker's link): refused.
    let page = Browser::new().go(cb.clone(), None, never).await.page();
    assert_eq!(page.status, 400);
    assert!(page.body.contains("different browser"), "{}", page.body);
    nothing_registered(&env, &auth_url).await;
    assert!(env.store.list_users().await.unwrap().is_empty());
    assert!(!pending.is_finished());
    pending.abort();
}

#[tokio::test]
async fn a_wrong_nonce_is_refused() {
    if !idp_available() {
        return;
    }
    let env = start(|_| {}).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let browser = Browser::new();
    let cb = browser
        .login_until_callback(&auth_url, "alice@example.com", "alice-password", |u| {
            with_query(u, "nonce", "a-nonce-this-login-never-sent")
        })
        .await;
    let page = browser.go(cb, None, never).await.page();
    assert_eq!(page.status, 400);
    assert!(page.body.contains("nonce mismatch"), "{}", page.body);
    nothing_registered(&env, &auth_url).await;
    assert!(env.store.list_users().await.unwrap().is_empty());
    pending.abort();
}

#[tokio::test]
async fn with_device_approval_required_a_login_waits_until_an_admin_approves() {
    if !idp_available() {
        return;
    }
    let env = start_with(|_| {}, |c| c.require_approval = true).await;
    let dev = Device::connect(&env).await;
    let (auth_url, pending) = dev.begin().await;
    let page = Browser::new()
        .login(&auth_url, "alice@example.com", "alice-password")
        .await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("waits for an administrator to approve it"),
        "{}",
        page.body
    );
    let r = timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(r.error, "");
    assert!(!r.machine_authorized);
    let node = env
        .store
        .get_node_by_node_key(&dev.node.public())
        .await
        .unwrap();
    assert!(!node.approved);

    use tower::ServiceExt;
    let resp = env
        .control
        .admin_router()
        .oneshot(
            axum::http::Request::post(format!("/api/v1/nodes/{}/approve", node.id))
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(env.store.get_node(node.id).await.unwrap().approved);
    let r = register(&dev.client, &dev.request("")).await;
    assert!(r.machine_authorized);
}

#[tokio::test]
async fn without_oidc_the_registration_page_shows_the_admin_command() {
    let dir = tempfile::tempdir().unwrap();
    let store = weft_store::open(&weft_store::sqlite_url_for_dir(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let control = Control::new(ControlConfig::new(&url), store.clone())
        .await
        .unwrap();
    let app = control.public_router(None);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let server = weft_ts2021::fetch_server_key(&url, CAPVER).await.unwrap();
    let client = weft_ts2021::dial(&url, &MachinePrivate::generate(), server, CAPVER)
        .await
        .unwrap();
    let dev = Device {
        client,
        node: NodePrivate::generate(),
    };
    let r = register(&dev.client, &dev.request("")).await;
    let auth_id = r.auth_url.rsplit('/').next().unwrap();
    let page = Browser::new().get(&r.auth_url, never).await.page();
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&format!(
            "weft nodes register --user USERNAME --key {auth_id}"
        )),
        "{}",
        page.body
    );
    let page = Browser::new()
        .get(&format!("{url}/register/unknown-id"), never)
        .await
        .page();
    assert_eq!(page.status, 404);
    assert!(
        page.body.contains("unknown or has expired"),
        "{}",
        page.body
    );
    let page = Browser::new()
        .get(&format!("{url}/oidc/callback?code=x&state=y"), never)
        .await
        .page();
    assert_eq!(page.status, 404);
    assert!(page.body.contains("no identity provider"), "{}", page.body);
    assert!(store.list_nodes().await.unwrap().is_empty());
}

#[test]
fn the_server_config_file_takes_an_oidc_table() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let path = dir.path().join("weft.toml");
    std::fs::write(
        &path,
        format!(
            r#"server_url = "https://ctrl.example.com"

[oidc]
issuer = "https://login.example.com"
client_id = "weft"
client_secret_file = "{}"
scopes = ["openid", "email", "groups"]
allowed_domains = ["example.com"]
allowed_groups = ["engineering"]
"#,
            secret.display()
        ),
    )
    .unwrap();
    let file = weft_control::FileConfig::load(&path).unwrap();
    let mut cfg = ControlConfig::new("https://ctrl.example.com");
    cfg.apply_file(&file).unwrap();
    let oidc = cfg.oidc.expect("oidc settings");
    assert_eq!(oidc.issuer, "https://login.example.com");
    assert_eq!(oidc.resolve_secret().unwrap().as_deref(), Some("s3cret"));
    assert_eq!(oidc.allowed_groups, vec!["engineering"]);
    assert!(oidc.email_verified_required);
    let p = OidcProvider::new(oidc, "https://ctrl.example.com").unwrap();
    assert_eq!(p.redirect_uri(), "https://ctrl.example.com/oidc/callback");

    std::fs::write(
        &path,
        "[oidc]\nissuer = \"https://x\"\nclient_id = \"w\"\nbogus = 1\n",
    )
    .unwrap();
    assert!(weft_control::FileConfig::load(&path).is_err());
}
