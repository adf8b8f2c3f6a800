//! OpenID Connect settings (the `[oidc]` table of the server configuration).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::OidcError;

/// OpenID Connect login settings.
///
/// ```toml
/// [oidc]
/// issuer = "https://login.example.com"
/// client_id = "weft"
/// client_secret_file = "/etc/weft/oidc-secret"
/// allowed_domains = ["example.com"]
/// allowed_groups = ["engineering"]
/// ```
///
/// Every non-empty `allowed_*` list must be satisfied: with `allowed_domains` and
/// `allowed_groups` both set, a user needs an address in one of the domains *and* one of
/// the groups.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Issuer URL; discovery reads `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// Client id registered at the provider.
    pub client_id: String,
    /// Client secret (prefer `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// File holding the client secret (surrounding whitespace is ignored).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scopes to request; `openid` is always requested. Default `openid profile email`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// E-mail domains allowed to log in (`example.com`); empty = any.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// E-mail addresses allowed to log in; empty = any.
    #[serde(default)]
    pub allowed_users: Vec<String>,
    /// Groups (from the `groups` claim) allowed to log in; empty = any.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// Refuse identities whose e-mail is not verified by the provider when the e-mail is
    /// used for a decision (allowed domains or users) or as the login name. Default true.
    #[serde(default = "default_true")]
    pub email_verified_required: bool,
    /// How long a started login stays valid, in seconds (default 600).
    #[serde(default = "default_login_ttl_secs")]
    pub login_ttl_secs: u64,
}

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"]
        .into_iter()
        .map(String::from)
        .collect()
}

fn default_true() -> bool {
    true
}

fn default_login_ttl_secs() -> u64 {
    600
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .field("scopes", &self.scopes)
            .field("allowed_domains", &self.allowed_domains)
            .field("allowed_users", &self.allowed_users)
            .field("allowed_groups", &self.allowed_groups)
            .field("email_verified_required", &self.email_verified_required)
            .field("login_ttl_secs", &self.login_ttl_secs)
            .finish()
    }
}

impl OidcConfig {
    /// Settings with the defaults for everything but the provider and client.
    pub fn new(issuer: &str, client_id: &str, client_secret: Option<&str>) -> OidcConfig {
        OidcConfig {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            client_secret: client_secret.map(String::from),
            client_secret_file: None,
            scopes: default_scopes(),
            allowed_domains: Vec::new(),
            allowed_users: Vec::new(),
            allowed_groups: Vec::new(),
            email_verified_required: true,
            login_ttl_secs: default_login_ttl_secs(),
        }
    }

    /// The client secret: `client_secret`, else the trimmed content of `client_secret_file`,
    /// else none (a public client).
    pub fn resolve_secret(&self) -> Result<Option<String>, OidcError> {
        if let Some(s) = &self.client_secret {
            return Ok(Some(s.clone()));
        }
        let Some(path) = &self.client_secret_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            OidcError::Config(format!("reading client secret {}: {e}", path.display()))
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(OidcError::Config(format!(
                "client secret file {} is empty",
                path.display()
            )));
        }
        Ok(Some(secret.to_string()))
    }

    /// How long a started login stays valid.
    pub fn login_ttl(&self) -> Duration {
        Duration::from_secs(self.login_ttl_secs)
    }

    /// The access rules from the `allowed_*` lists.
    pub fn access_policy(&self) -> AccessPolicy {
        AccessPolicy {
            allowed_domains: self.allowed_domains.clone(),
            allowed_users: self.allowed_users.clone(),
            allowed_groups: self.allowed_groups.clone(),
            email_verified_required: self.email_verified_required,
        }
    }
}

/// Who may log in (see [`OidcConfig`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// E-mail domains; empty = any.
    pub allowed_domains: Vec<String>,
    /// E-mail addresses; empty = any.
    pub allowed_users: Vec<String>,
    /// Groups; empty = any.
    pub allowed_groups: Vec<String>,
    /// Unverified e-mail addresses are refused where they matter.
    pub email_verified_required: bool,
}

/// Why [`AccessPolicy::check`] refused an identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The provider did not send an e-mail address, but the rules need one.
    #[error("the identity provider did not send an e-mail address, which this server requires")]
    NoEmail,
    /// The e-mail address is not verified by the provider.
    #[error("the e-mail address {0} is not verified by the identity provider")]
    EmailNotVerified(String),
    /// The e-mail domain is not allowed.
    #[error("accounts in the domain {domain} are not allowed to log in to this network")]
    Domain {
        /// The domain of the address presented.
        domain: String,
    },
    /// The address is not in `allowed_users`.
    #[error("the account {0} is not allowed to log in to this network")]
    User(String),
    /// None of the user's groups is allowed.
    #[error("none of your groups is allowed to log in to this network")]
    Group,
}

impl AccessPolicy {
    /// Checks an identity against every non-empty rule.
    pub fn check(&self, id: &crate::Identity) -> Result<(), Denied> {
        let needs_email = !self.allowed_domains.is_empty() || !self.allowed_users.is_empty();
        if needs_email {
            let Some(email) = id.email.as_deref().filter(|e| !e.is_empty()) else {
                return Err(Denied::NoEmail);
            };
            if self.email_verified_required && !id.email_verified {
                return Err(Denied::EmailNotVerified(email.to_string()));
            }
            let email = email.to_ascii_lowercase();
            if !self.allowed_domains.is_empty() {
                let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
                let ok = self.allowed_domains.iter().any(|d| {
                    d.trim_start_matches('@')
                        .trim_end_matches('.')
                        .eq_ignore_ascii_case(domain)
                });
                if !ok {
                    return Err(Denied::Domain {
                        domain: domain.to_string(),
                    });
                }
            }
            if !self.allowed_users.is_empty()
                && !self
                    .allowed_users
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(&email))
            {
                return Err(Denied::User(email));
            }
        }
        if !self.allowed_groups.is_empty()
            && !self
                .allowed_groups
                .iter()
                .any(|g| id.groups.iter().any(|have| have == g))
        {
            return Err(Denied::Group);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn alice() -> Identity {
        Identity {
            issuer: "https://idp.example".into(),
            subject: "u1".into(),
            email: Some("Alice@Example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            preferred_username: None,
            picture: None,
            groups: vec!["eng".into()],
        }
    }

    #[test]
    fn empty_policy_allows_anyone() {
        let mut id = alice();
        id.email = None;
        id.email_verified = false;
        assert_eq!(AccessPolicy::default().check(&id), Ok(()));
    }

    #[test]
    fn domain_match_is_case_insensitive_and_other_domains_are_refused() {
        let p = AccessPolicy {
            allowed_domains: vec!["example.COM".into()],
            email_verified_required: true,
            ..AccessPolicy::default()
        };
        assert_eq!(p.check(&alice()), Ok(()));
        let mut m = alice();
        m.email = Some("mallory@example.com.evil.test".into());
        assert_eq!(
            p.check(&m),
            Err(Denied::Domain {
                domain: "example.com.evil.test".into()
            })
        );
    }

    #[test]
    fn unverified_email_is_refused_when_the_domain_decides() {
        let p = AccessPolicy {
            allowed_domains: vec!["example.com".into()],
            email_verified_required: true,
            ..AccessPolicy::default()
        };
        let mut id = alice();
        id.email_verified = false;
        assert!(matches!(p.check(&id), Err(Denied::EmailNotVerified(_))));
        let lax = AccessPolicy {
            email_verified_required: false,
            ..p
        };
        assert_eq!(lax.check(&id), Ok(()));
    }

    #[test]
    fn missing_email_is_refused_when_users_are_listed() {
        let p = AccessPolicy {
            allowed_users: vec!["alice@example.com".into()],
            ..AccessPolicy::default()
        };
        assert_eq!(p.check(&alice()), Ok(()));
        let mut id = alice();
        id.email = None;
        assert_eq!(p.check(&id), Err(Denied::NoEmail));
        id.email = Some("bob@example.com".into());
        assert_eq!(p.check(&id), Err(Denied::User("bob@example.com".into())));
    }

    #[test]
    fn groups_need_one_match_and_all_rules_must_pass() {
        let p = AccessPolicy {
            allowed_domains: vec!["example.com".into()],
            allowed_groups: vec!["ops".into(), "eng".into()],
            email_verified_required: true,
            ..AccessPolicy::default()
        };
        assert_eq!(p.check(&alice()), Ok(()));
        let mut id = alice();
        id.groups = vec!["sales".into()];
        assert_eq!(p.check(&id), Err(Denied::Group));
        let mut id = alice();
        id.email = Some("alice@elsewhere.test".into());
        assert!(matches!(p.check(&id), Err(Denied::Domain { .. })));
    }

    #[test]
    fn config_parses_from_toml_with_defaults_and_redacts_the_secret() {
        let c: OidcConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://idp.example",
            "client_id": "weft",
            "client_secret": "s3cret",
            "allowed_domains": ["example.com"],
        }))
        .unwrap();
        assert_eq!(c.scopes, vec!["openid", "profile", "email"]);
        assert!(c.email_verified_required);
        assert_eq!(c.login_ttl(), Duration::from_secs(600));
        assert_eq!(c.resolve_secret().unwrap().as_deref(), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn secret_file_is_trimmed_and_an_empty_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "  abc\n").unwrap();
        let mut c = OidcConfig::new("https://idp.example", "weft", None);
        c.client_secret_file = Some(p.clone());
        assert_eq!(c.resolve_secret().unwrap().as_deref(), Some("abc"));
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(c.resolve_secret(), Err(OidcError::Config(_))));
    }
}
