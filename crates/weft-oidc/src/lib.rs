//! Layer 2: interactive login for the coordination server, with OpenID Connect.
//!
//! - [`OidcProvider`]: the relying party (discovery from the issuer URL, authorization-code
//!   flow with PKCE, `state` + `nonce` bound to the registration session, ID-token
//!   verification, userinfo, the `groups` claim, allowed domains/users/groups).
//!   Started logins are kept server-side ([`pending`]) and consumed by the first callback,
//!   so a replayed code, a wrong state or a wrong nonce fails with a clear error.
//! - [`routes::router`]: `GET /register/{auth_id}` (the page behind a node's AuthURL: a
//!   redirect to the provider, or instructions for `weft nodes register` without OIDC) and
//!   `GET /oidc/callback` (verifies the login, creates or refreshes the user, then completes
//!   the registration through a [`SessionCompleter`] supplied by the control server).
//! - [`page`]: small HTML pages for outcomes and errors (no internals shown).

pub mod config;
pub mod page;
pub mod pending;
pub mod provider;
pub mod routes;
pub mod users;

pub use config::{AccessPolicy, Denied, OidcConfig};
pub use provider::{CallbackParams, GroupsClaim, OidcProvider, CALLBACK_PATH};
pub use routes::{router, LoginRoutes, SessionCompleter};
pub use users::upsert_user;

/// A verified identity from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's issuer URL (`iss`).
    pub issuer: String,
    /// The provider's stable subject (`sub`).
    pub subject: String,
    /// E-mail address, if sent.
    pub email: Option<String>,
    /// Whether the provider verified the e-mail address.
    pub email_verified: bool,
    /// Display name, if sent.
    pub name: Option<String>,
    /// `preferred_username`, if sent.
    pub preferred_username: Option<String>,
    /// Profile picture URL, if sent.
    pub picture: Option<String>,
    /// The `groups` claim (sorted, without duplicates; empty if absent).
    pub groups: Vec<String>,
}

impl Identity {
    /// The key under which the user is stored (`User::provider_subject`): issuer and
    /// subject, which together never change for one account.
    pub fn provider_subject(&self) -> String {
        format!("{}#{}", self.issuer.trim_end_matches('/'), self.subject)
    }

    /// The login name for a new user: the verified e-mail address, else
    /// `preferred_username`, else the subject.
    pub fn login_name(&self) -> String {
        if let Some(e) = self.email.as_deref().filter(|e| !e.is_empty()) {
            if self.email_verified {
                return e.to_ascii_lowercase();
            }
        }
        if let Some(u) = self.preferred_username.as_deref().filter(|u| !u.is_empty()) {
            return u.to_string();
        }
        self.subject.clone()
    }
}

/// Errors of the login flow. Each has a message fit to show the person logging in
/// ([`OidcError::user_message`]); the `Display` form is for logs.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The settings are unusable.
    #[error("OIDC configuration: {0}")]
    Config(String),
    /// Discovery at the issuer failed.
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
    /// Too many logins are in progress.
    #[error("too many logins in progress")]
    TooManyLogins,
    /// The callback carried no `state`.
    #[error("callback without state")]
    MissingState,
    /// The `state` names no login in progress (never started here, or already used).
    #[error("unknown or already used login state")]
    UnknownState,
    /// The login was started too long ago.
    #[error("login expired")]
    LoginExpired,
    /// The browser finishing the login is not the one that started it.
    #[error("state does not match this browser's login")]
    StateMismatch,
    /// The provider reported an error instead of a code.
    #[error("identity provider error {error}: {description}")]
    Provider {
        /// OAuth error code.
        error: String,
        /// Its description.
        description: String,
    },
    /// The callback carried no code.
    #[error("callback without code")]
    MissingCode,
    /// The provider refused the code (invalid, expired or already redeemed).
    #[error("code exchange failed: {0}")]
    CodeExchange(String),
    /// The ID token carries a nonce other than the one this login sent.
    #[error("ID token nonce does not match")]
    NonceMismatch,
    /// The tokens failed verification.
    #[error("token verification failed: {0}")]
    Token(String),
    /// The identity is not allowed to log in.
    #[error("login refused: {0}")]
    Denied(#[from] Denied),
}

impl OidcError {
    /// What to tell the person in the browser: plain words, no internals.
    pub fn user_message(&self) -> String {
        match self {
            OidcError::Config(_) | OidcError::Discovery(_) => {
                "The server could not reach its identity provider. Try again later, or ask an administrator to check the server's log.".into()
            }
            OidcError::TooManyLogins => "Too many logins are in progress. Try again in a few minutes.".into(),
            OidcError::MissingState | OidcError::MissingCode => {
                "This page was opened without the information the identity provider sends. Start the login again from your device.".into()
            }
            OidcError::UnknownState => {
                "This login link was already used or is not known to this server. Start the login again from your device.".into()
            }
            OidcError::LoginExpired => "This login took too long and expired. Start the login again from your device.".into(),
            OidcError::StateMismatch => {
                "This login was started in a different browser (or its cookie is missing). Open the login link from your device in this browser.".into()
            }
            OidcError::Provider { error, description } => {
                if description.is_empty() {
                    format!("The identity provider refused the login ({error}).")
                } else {
                    format!("The identity provider refused the login: {description} ({error}).")
                }
            }
            OidcError::CodeExchange(_) => {
                "The identity provider did not accept this login (its code was already used or has expired). Start the login again from your device.".into()
            }
            OidcError::NonceMismatch => {
                "The identity provider's answer does not belong to this login (nonce mismatch). Start the login again from your device.".into()
            }
            OidcError::Token(_) => "The identity provider's answer could not be verified. Start the login again, or ask an administrator to check the server's log.".into(),
            OidcError::Denied(d) => format!("You are signed in at the identity provider, but {d}."),
        }
    }

    /// HTTP status of the error page.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            OidcError::Config(_) => StatusCode::INTERNAL_SERVER_ERROR,
            OidcError::Discovery(_) | OidcError::Token(_) => StatusCode::BAD_GATEWAY,
            OidcError::TooManyLogins => StatusCode::SERVICE_UNAVAILABLE,
            OidcError::Denied(_) | OidcError::Provider { .. } => StatusCode::FORBIDDEN,
            OidcError::MissingState
            | OidcError::UnknownState
            | OidcError::LoginExpired
            | OidcError::StateMismatch
            | OidcError::MissingCode
            | OidcError::CodeExchange(_)
            | OidcError::NonceMismatch => StatusCode::BAD_REQUEST,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            issuer: "https://idp.example/".into(),
            subject: "u1".into(),
            email: Some("Alice@Example.com".into()),
            email_verified: true,
            name: None,
            preferred_username: Some("alice".into()),
            picture: None,
            groups: vec![],
        }
    }

    #[test]
    fn login_name_prefers_a_verified_email() {
        assert_eq!(id().login_name(), "alice@example.com");
        let mut i = id();
        i.email_verified = false;
        assert_eq!(i.login_name(), "alice");
        i.preferred_username = None;
        assert_eq!(i.login_name(), "u1");
    }

    #[test]
    fn provider_subject_joins_issuer_and_subject() {
        assert_eq!(id().provider_subject(), "https://idp.example#u1");
    }

    #[test]
    fn user_messages_never_show_internal_details() {
        let e = OidcError::CodeExchange("invalid_grant: secret internals".into());
        assert!(!e.user_message().contains("internals"));
        let e = OidcError::Token("signature at /x/y.rs:12".into());
        assert!(!e.user_message().contains("y.rs"));
        let e = OidcError::Denied(Denied::Domain {
            domain: "elsewhere.test".into(),
        });
        assert!(e.user_message().contains("elsewhere.test"));
        assert_eq!(e.status(), axum::http::StatusCode::FORBIDDEN);
    }
}
