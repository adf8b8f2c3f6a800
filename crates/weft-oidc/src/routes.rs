//! The browser side of interactive registration: `GET /register/{auth_id}` and
//! `GET /oidc/callback`.
//!
//! The control server mounts [`router`] on its public listener and supplies a
//! [`SessionCompleter`], through which a verified login completes the registration
//! session (creating or re-keying the node and waking the client's follow-up request).

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use time::OffsetDateTime;
use weft_store::{Node, Store, User};

use crate::users::{upsert_user, UserError};
use crate::{page, CallbackParams, OidcProvider, CALLBACK_PATH};

/// Name of the cookie that binds a login to the browser that started it.
pub const STATE_COOKIE: &str = "weft_oidc_state";

/// Why a registration session could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// The session does not exist (any more) or has expired.
    #[error("registration session unknown or expired")]
    Gone,
    /// Someone already completed the session.
    #[error("registration session already completed")]
    AlreadyComplete,
    /// Anything else (logged; the page says only that it failed).
    #[error("{0}")]
    Other(String),
}

/// What the control server does when a login succeeded.
#[async_trait]
pub trait SessionCompleter: Send + Sync + 'static {
    /// Completes the registration session `auth_id` for `user`: creates (or re-keys) the
    /// node of the session's machine, marks the session completed and wakes the client.
    async fn complete_session(&self, auth_id: &str, user: &User) -> Result<Node, CompleteError>;

    /// A user row was created or its profile (groups included) changed in the store;
    /// in-memory state derived from users should be refreshed.
    async fn user_updated(&self, user: &User);
}

/// What [`router`] needs.
#[derive(Clone)]
pub struct LoginRoutes {
    /// The store (registration sessions, users).
    pub store: Arc<dyn Store>,
    /// The OpenID Connect provider; `None` = logins are completed by an administrator.
    pub provider: Option<Arc<OidcProvider>>,
    /// Completes registrations.
    pub completer: Arc<dyn SessionCompleter>,
}

impl std::fmt::Debug for LoginRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRoutes")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// `GET /register/{auth_id}` and `GET /oidc/callback`.
pub fn router(routes: LoginRoutes) -> Router {
    Router::new()
        .route("/register/{auth_id}", get(register_page))
        .route(CALLBACK_PATH, get(callback))
        .with_state(routes)
}

/// Whether `s` can be an auth id (what [`weft_store::names::random_auth_id`] makes).
fn valid_auth_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

enum SessionState {
    Pending(Box<weft_store::RegistrationSession>),
    Completed,
    Gone,
}

async fn session_state(store: &dyn Store, auth_id: &str) -> Result<SessionState, Response> {
    match store.get_session(auth_id).await {
        Ok(s) if s.completed_user_id.is_some() => Ok(SessionState::Completed),
        Ok(s) if s.expires_at <= OffsetDateTime::now_utc() => Ok(SessionState::Gone),
        Ok(s) => Ok(SessionState::Pending(Box::new(s))),
        Err(e) if e.is_not_found() => Ok(SessionState::Gone),
        Err(e) => {
            tracing::warn!(error = %e, "reading registration session failed");
            Err(server_error())
        }
    }
}

fn server_error() -> Response {
    page::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The server could not process this request. Try again, or ask an administrator to check the server's log.",
    )
}

fn gone_page() -> Response {
    page::error(
        StatusCode::NOT_FOUND,
        "Registration not found",
        "This registration link is unknown or has expired. Run the login again on your device to get a new link.",
    )
}

fn already_complete_page() -> Response {
    page::response(
        StatusCode::OK,
        page::render(
            "Registration complete",
            &["This machine is already registered. You may close this page."],
            None,
        ),
    )
}

async fn register_page(State(r): State<LoginRoutes>, Path(auth_id): Path<String>) -> Response {
    if !valid_auth_id(&auth_id) {
        return page::error(
            StatusCode::BAD_REQUEST,
            "Invalid registration link",
            "This registration link is malformed. Copy the whole link your device printed.",
        );
    }
    let session = match session_state(&*r.store, &auth_id).await {
        Ok(SessionState::Pending(s)) => s,
        Ok(SessionState::Completed) => return already_complete_page(),
        Ok(SessionState::Gone) => return gone_page(),
        Err(resp) => return resp,
    };
    let Some(provider) = &r.provider else {
        let cmd = format!("weft nodes register --user USERNAME --key {auth_id}");
        let machine = format!(
            "Machine {} wants to join the network.",
            session.machine_key.short()
        );
        return page::response(
            StatusCode::OK,
            page::render(
                "Register this machine",
                &[
                    &machine,
                    "This server has no identity provider configured. An administrator completes the registration with:",
                ],
                Some(&cmd),
            ),
        );
    };
    match provider.start(&auth_id).await {
        Ok((url, state)) => {
            let secure = if provider.redirect_uri().starts_with("https://") {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{STATE_COOKIE}={state}; Path={CALLBACK_PATH}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
                provider.config().login_ttl_secs
            );
            let mut resp = StatusCode::SEE_OTHER.into_response();
            let h = resp.headers_mut();
            match (HeaderValue::from_str(&url), HeaderValue::from_str(&cookie)) {
                (Ok(loc), Ok(c)) => {
                    h.insert(header::LOCATION, loc);
                    h.insert(header::SET_COOKIE, c);
                    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                }
                _ => return server_error(),
            }
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, auth_id, "could not start OpenID Connect login");
            page::login_error(&e)
        }
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn clear_cookie(mut resp: Response) -> Response {
    let c = format!("{STATE_COOKIE}=; Path={CALLBACK_PATH}; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

async fn callback(
    State(r): State<LoginRoutes>,
    headers: HeaderMap,
    query: Result<Query<CallbackParams>, QueryRejection>,
) -> Response {
    let params = query.map(|q| q.0).unwrap_or_default();
    clear_cookie(finish_login(&r, &headers, params).await)
}

async fn finish_login(r: &LoginRoutes, headers: &HeaderMap, params: CallbackParams) -> Response {
    let Some(provider) = &r.provider else {
        return page::error(
            StatusCode::NOT_FOUND,
            "Login not available",
            "This server has no identity provider configured.",
        );
    };
    let (auth_id, identity) = match provider
        .finish(&params, cookie_value(headers, STATE_COOKIE))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(error = %e, "OpenID Connect login refused");
            return page::login_error(&e);
        }
    };
    match session_state(&*r.store, &auth_id).await {
        Ok(SessionState::Pending(_)) => {}
        Ok(SessionState::Completed) => return already_complete_page(),
        Ok(SessionState::Gone) => return gone_page(),
        Err(resp) => return resp,
    }
    let user = match upsert_user(&*r.store, &identity).await {
        Ok((u, wrote)) => {
            if wrote {
                r.completer.user_updated(&u).await;
            }
            u
        }
        Err(UserError::NameTaken(name)) => {
            tracing::warn!(user = %name, subject = %identity.provider_subject(), "OIDC login collides with an existing user");
            return page::error(
                StatusCode::CONFLICT,
                "Login failed",
                &format!("A user named {name} already exists on this server and is not linked to your identity provider account. Ask an administrator to rename or remove that user."),
            );
        }
        Err(UserError::Store(e)) => {
            tracing::warn!(error = %e, "storing OIDC user failed");
            return server_error();
        }
    };
    let node = match r.completer.complete_session(&auth_id, &user).await {
        Ok(n) => n,
        Err(CompleteError::Gone) => return gone_page(),
        Err(CompleteError::AlreadyComplete) => return already_complete_page(),
        Err(CompleteError::Other(e)) => {
            tracing::warn!(error = %e, auth_id, "completing registration failed");
            return server_error();
        }
    };
    let who = format!("You are signed in as {}.", user.name);
    let what = if node.approved {
        format!(
            "The machine {} is now connected to the network. You may close this page.",
            node.given_name
        )
    } else {
        format!(
            "The machine {} is registered and waits for an administrator to approve it (weft nodes approve {}).",
            node.given_name, node.id
        )
    };
    page::response(
        StatusCode::OK,
        page::render("Login successful", &[&who, &what], None),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_ids_are_checked_before_any_lookup() {
        assert!(valid_auth_id("abcDEF-_09"));
        assert!(!valid_auth_id(""));
        assert!(!valid_auth_id("../x"));
        assert!(!valid_auth_id(&"a".repeat(65)));
    }

    #[test]
    fn the_state_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; weft_oidc_state=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie_value(&h, STATE_COOKIE), Some("xyz"));
        assert_eq!(cookie_value(&h, "c"), None);
    }
}
