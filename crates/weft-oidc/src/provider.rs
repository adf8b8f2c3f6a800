//! The relying party: discovery, authorization-code flow with PKCE, ID-token checks.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret,
    CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse, TokenResponse, UserInfoClaims,
};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::OnceCell;

use crate::pending::{PendingLogin, PendingLogins, TakeError};
use crate::{AccessPolicy, Identity, OidcConfig, OidcError};

/// The path of the redirect URI under the server URL.
pub const CALLBACK_PATH: &str = "/oidc/callback";

/// Timeout of each request to the provider (discovery, token, userinfo).
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// Claims beyond the standard ones that weft reads: `groups`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GroupsClaim {
    /// The `groups` claim: a list of strings, or one string (some providers send that).
    #[serde(default, deserialize_with = "groups_from_any")]
    pub groups: Option<Vec<String>>,
}

impl AdditionalClaims for GroupsClaim {}

fn groups_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Any {
        One(String),
        Many(Vec<serde_json::Value>),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Any>::deserialize(d)? {
        None => None,
        Some(Any::One(s)) => Some(vec![s]),
        Some(Any::Many(v)) => Some(
            v.into_iter()
                .filter_map(|x| match x {
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .collect(),
        ),
        Some(Any::Other(_)) => None,
    })
}

type IdFields = IdTokenFields<
    GroupsClaim,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type TokenResp = StandardTokenResponse<IdFields, CoreTokenType>;
type RpClient = Client<
    GroupsClaim,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    TokenResp,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// An OpenID Connect provider as this server's relying party sees it.
///
/// Discovery runs on the first use (or eagerly with [`OidcProvider::discover`]) and its
/// result is kept; a failed discovery is retried on the next use.
pub struct OidcProvider {
    config: OidcConfig,
    secret: Option<String>,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    policy: AccessPolicy,
    http: reqwest::Client,
    client: OnceCell<RpClient>,
    pending: Mutex<PendingLogins>,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .field("redirect", &self.redirect.as_str())
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Checks the settings and prepares the relying party for the server reachable at
    /// `server_url` (the redirect URI is `<server_url>/oidc/callback`). No network IO.
    pub fn new(config: OidcConfig, server_url: &str) -> Result<OidcProvider, OidcError> {
        let issuer = IssuerUrl::new(config.issuer.clone())
            .map_err(|e| OidcError::Config(format!("issuer {:?}: {e}", config.issuer)))?;
        if config.client_id.is_empty() {
            return Err(OidcError::Config("client_id is empty".into()));
        }
        let redirect_str = format!("{}{CALLBACK_PATH}", server_url.trim_end_matches('/'));
        let redirect = RedirectUrl::new(redirect_str.clone())
            .map_err(|e| OidcError::Config(format!("redirect URI {redirect_str:?}: {e}")))?;
        let secret = config.resolve_secret()?;
        let http = reqwest::Client::builder()
            // Following redirects from the provider's endpoints would allow SSRF.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| OidcError::Config(format!("HTTP client: {e}")))?;
        Ok(OidcProvider {
            policy: config.access_policy(),
            pending: Mutex::new(PendingLogins::new(config.login_ttl())),
            config,
            secret,
            issuer,
            redirect,
            http,
            client: OnceCell::new(),
        })
    }

    /// [`OidcProvider::new`] followed by discovery, so configuration mistakes show at start.
    pub async fn discover(config: OidcConfig, server_url: &str) -> Result<OidcProvider, OidcError> {
        let p = OidcProvider::new(config, server_url)?;
        p.client().await?;
        Ok(p)
    }

    /// The settings.
    pub fn config(&self) -> &OidcConfig {
        &self.config
    }

    /// The redirect URI registered at the provider.
    pub fn redirect_uri(&self) -> &str {
        self.redirect.as_str()
    }

    async fn client(&self) -> Result<&RpClient, OidcError> {
        self.client
            .get_or_try_init(|| async {
                let meta = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.http)
                    .await
                    .map_err(|e| OidcError::Discovery(error_chain(&e)))?;
                tracing::info!(issuer = %self.config.issuer, "OpenID Connect provider discovered");
                let client: RpClient = Client::from_provider_metadata(
                    meta,
                    ClientId::new(self.config.client_id.clone()),
                    self.secret.clone().map(ClientSecret::new),
                )
                .set_redirect_uri(self.redirect.clone());
                Ok(client)
            })
            .await
    }

    /// Starts a login for the registration session `auth_id`: returns the provider URL to
    /// send the browser to and the `state` value (the caller binds it to the browser with
    /// a cookie and passes it back to [`OidcProvider::finish`]).
    pub async fn start(&self, auth_id: &str) -> Result<(String, String), OidcError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        let (url, state, nonce) = req.url();
        let login = PendingLogin {
            auth_id: auth_id.to_string(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            started: Instant::now(),
        };
        let inserted = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(state.secret().clone(), login, Instant::now());
        if !inserted {
            return Err(OidcError::TooManyLogins);
        }
        tracing::debug!(auth_id, "login sent to the identity provider");
        Ok((url.to_string(), state.secret().clone()))
    }

    /// Finishes a login from the provider's callback parameters. `browser_state` is the
    /// state value the browser carried in its cookie (`None` if it had none).
    ///
    /// Returns the registration session's auth id and the verified, allowed identity.
    /// The pending login is consumed whatever the outcome, so a replay fails.
    pub async fn finish(
        &self,
        callback: &CallbackParams,
        browser_state: Option<&str>,
    ) -> Result<(String, Identity), OidcError> {
        let Some(state) = callback.state.as_deref().filter(|s| !s.is_empty()) else {
            return Err(OidcError::MissingState);
        };
        let taken = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(state, Instant::now());
        let login = match taken {
            Ok(l) => l,
            Err(TakeError::Unknown) => return Err(OidcError::UnknownState),
            Err(TakeError::Expired) => return Err(OidcError::LoginExpired),
        };
        if browser_state != Some(state) {
            return Err(OidcError::StateMismatch);
        }
        if let Some(err) = &callback.error {
            return Err(OidcError::Provider {
                error: err.clone(),
                description: callback.error_description.clone().unwrap_or_default(),
            });
        }
        if let Some(iss) = &callback.iss {
            if iss != self.issuer.as_str() && iss != self.issuer.url().as_str() {
                return Err(OidcError::Token(format!(
                    "the callback names issuer {iss:?}, not {:?}",
                    self.issuer.as_str()
                )));
            }
        }
        let Some(code) = callback.code.as_deref().filter(|c| !c.is_empty()) else {
            return Err(OidcError::MissingCode);
        };
        let identity = self.redeem(code, &login).await?;
        self.policy.check(&identity).map_err(OidcError::Denied)?;
        tracing::info!(auth_id = %login.auth_id, subject = %identity.subject, login = %identity.login_name(), "OpenID Connect login verified");
        Ok((login.auth_id, identity))
    }

    async fn redeem(&self, code: &str, login: &PendingLogin) -> Result<Identity, OidcError> {
        let client = self.client().await?;
        let token = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Token(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(login.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::CodeExchange(error_chain(&e)))?;
        let id_token = token
            .id_token()
            .ok_or_else(|| OidcError::Token("the provider sent no ID token".into()))?;
        let verifier = client.id_token_verifier();
        let nonce = Nonce::new(login.nonce.clone());
        let claims = id_token.claims(&verifier, &nonce).map_err(|e| match e {
            openidconnect::ClaimsVerificationError::InvalidNonce(_) => OidcError::NonceMismatch,
            e => OidcError::Token(error_chain(&e)),
        })?;
        if let Some(expected) = claims.access_token_hash() {
            let alg = id_token
                .signing_alg()
                .map_err(|e| OidcError::Token(e.to_string()))?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|e| OidcError::Token(e.to_string()))?;
            let actual = AccessTokenHash::from_token(token.access_token(), alg, key)
                .map_err(|e| OidcError::Token(e.to_string()))?;
            if actual != *expected {
                return Err(OidcError::Token("access token hash mismatch".into()));
            }
        }
        let mut id = Identity {
            issuer: claims.issuer().as_str().to_string(),
            subject: claims.subject().as_str().to_string(),
            email: claims.email().map(|e| e.as_str().to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            preferred_username: claims.preferred_username().map(|u| u.as_str().to_string()),
            picture: claims
                .picture()
                .and_then(|p| p.get(None))
                .map(|p| p.as_str().to_string()),
            groups: claims
                .additional_claims()
                .groups
                .clone()
                .unwrap_or_default(),
        };
        let id_token_groups = claims.additional_claims().groups.is_some();
        if let Ok(req) =
            client.user_info(token.access_token().clone(), Some(claims.subject().clone()))
        {
            let info: UserInfoClaims<GroupsClaim, CoreGenderClaim> = req
                .request_async(&self.http)
                .await
                .map_err(|e| OidcError::Token(format!("userinfo: {}", error_chain(&e))))?;
            if id.email.is_none() {
                id.email = info.email().map(|e| e.as_str().to_string());
                id.email_verified = info.email_verified().unwrap_or(false);
            }
            if id.name.is_none() {
                id.name = info
                    .name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.as_str().to_string());
            }
            if id.preferred_username.is_none() {
                id.preferred_username = info.preferred_username().map(|u| u.as_str().to_string());
            }
            if id.picture.is_none() {
                id.picture = info
                    .picture()
                    .and_then(|p| p.get(None))
                    .map(|p| p.as_str().to_string());
            }
            if !id_token_groups {
                id.groups = info.additional_claims().groups.clone().unwrap_or_default();
            }
        }
        id.groups.sort();
        id.groups.dedup();
        Ok(id)
    }
}

/// The query parameters of the provider's redirect to `/oidc/callback`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CallbackParams {
    /// Authorization code.
    pub code: Option<String>,
    /// The state value sent in the authorization request.
    pub state: Option<String>,
    /// Error code when the provider refused (e.g. `access_denied`).
    pub error: Option<String>,
    /// Human-readable error.
    pub error_description: Option<String>,
    /// The issuer (RFC 9207), when the provider sends it.
    pub iss: Option<String>,
}

/// An error and its sources, joined with `: `.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_claim_accepts_a_list_a_string_or_junk() {
        let g: GroupsClaim = serde_json::from_str(r#"{"groups":["a","b",3]}"#).unwrap();
        assert_eq!(g.groups, Some(vec!["a".into(), "b".into()]));
        let g: GroupsClaim = serde_json::from_str(r#"{"groups":"a"}"#).unwrap();
        assert_eq!(g.groups, Some(vec!["a".into()]));
        let g: GroupsClaim = serde_json::from_str(r#"{"groups":{"x":1}}"#).unwrap();
        assert_eq!(g.groups, None);
        let g: GroupsClaim = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(g.groups, None);
    }

    fn provider() -> OidcProvider {
        let cfg = OidcConfig::new("http://127.0.0.1:9", "weft", Some("s"));
        OidcProvider::new(cfg, "http://127.0.0.1:8080/").unwrap()
    }

    #[test]
    fn redirect_uri_is_under_the_server_url() {
        assert_eq!(
            provider().redirect_uri(),
            "http://127.0.0.1:8080/oidc/callback"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let cfg = OidcConfig::new("not a url", "weft", None);
        assert!(matches!(
            OidcProvider::new(cfg, "http://x"),
            Err(OidcError::Config(_))
        ));
        let cfg = OidcConfig::new("http://127.0.0.1:9", "", None);
        assert!(matches!(
            OidcProvider::new(cfg, "http://x"),
            Err(OidcError::Config(_))
        ));
    }

    fn with_pending(p: &OidcProvider, state: &str, auth_id: &str) {
        let now = Instant::now();
        assert!(p.pending.lock().unwrap().insert(
            state.into(),
            PendingLogin {
                auth_id: auth_id.into(),
                nonce: "n".into(),
                pkce_verifier: "v".into(),
                started: now,
            },
            now,
        ));
    }

    #[tokio::test]
    async fn a_callback_without_state_or_with_an_unknown_state_is_refused() {
        let p = provider();
        let r = p.finish(&CallbackParams::default(), None).await;
        assert!(matches!(r, Err(OidcError::MissingState)));
        let cb = CallbackParams {
            code: Some("c".into()),
            state: Some("nope".into()),
            ..CallbackParams::default()
        };
        assert!(matches!(
            p.finish(&cb, Some("nope")).await,
            Err(OidcError::UnknownState)
        ));
    }

    #[tokio::test]
    async fn a_state_not_bound_to_this_browser_is_refused_and_consumed() {
        let p = provider();
        with_pending(&p, "s1", "a1");
        let cb = CallbackParams {
            code: Some("c".into()),
            state: Some("s1".into()),
            ..CallbackParams::default()
        };
        assert!(matches!(
            p.finish(&cb, Some("other")).await,
            Err(OidcError::StateMismatch)
        ));
        // The attempt used the login up: the right browser cannot finish it either.
        assert!(matches!(
            p.finish(&cb, Some("s1")).await,
            Err(OidcError::UnknownState)
        ));
    }

    #[tokio::test]
    async fn a_provider_error_is_reported_with_its_description() {
        let p = provider();
        with_pending(&p, "s1", "a1");
        let cb = CallbackParams {
            state: Some("s1".into()),
            error: Some("access_denied".into()),
            error_description: Some("End-User aborted interaction".into()),
            ..CallbackParams::default()
        };
        match p.finish(&cb, Some("s1")).await {
            Err(OidcError::Provider { error, description }) => {
                assert_eq!(error, "access_denied");
                assert_eq!(description, "End-User aborted interaction");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_callback_from_another_issuer_is_refused() {
        let p = provider();
        with_pending(&p, "s1", "a1");
        let cb = CallbackParams {
            code: Some("c".into()),
            state: Some("s1".into()),
            iss: Some("http://evil.test".into()),
            ..CallbackParams::default()
        };
        assert!(matches!(
            p.finish(&cb, Some("s1")).await,
            Err(OidcError::Token(_))
        ));
    }

    #[tokio::test]
    async fn a_callback_without_code_is_refused() {
        let p = provider();
        with_pending(&p, "s1", "a1");
        let cb = CallbackParams {
            state: Some("s1".into()),
            ..CallbackParams::default()
        };
        assert!(matches!(
            p.finish(&cb, Some("s1")).await,
            Err(OidcError::MissingCode)
        ));
    }

    #[tokio::test]
    async fn an_expired_login_is_refused() {
        let mut cfg = OidcConfig::new("http://127.0.0.1:9", "weft", Some("s"));
        cfg.login_ttl_secs = 0;
        let p = OidcProvider::new(cfg, "http://127.0.0.1:8080").unwrap();
        with_pending(&p, "s1", "a1");
        let cb = CallbackParams {
            code: Some("c".into()),
            state: Some("s1".into()),
            ..CallbackParams::default()
        };
        assert!(matches!(
            p.finish(&cb, Some("s1")).await,
            Err(OidcError::LoginExpired)
        ));
    }
}
