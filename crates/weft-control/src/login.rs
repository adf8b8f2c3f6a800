//! Interactive login pages (`/register/{auth_id}`, `/oidc/callback`), served by
//! [`weft_oidc::router`] with this server as the [`weft_oidc::SessionCompleter`].

use async_trait::async_trait;
use axum::Router;
use weft_oidc::routes::CompleteError;
use weft_oidc::{LoginRoutes, SessionCompleter};
use weft_store::{Node, User};

use crate::{ApiError, Control};

/// The login routes for `c` (OIDC redirect when configured, else admin instructions).
pub(crate) fn router(c: &Control) -> Router {
    weft_oidc::router(LoginRoutes {
        store: c.inner.store.clone(),
        provider: c.inner.oidc.clone(),
        completer: std::sync::Arc::new(c.clone()),
    })
}

#[async_trait]
impl SessionCompleter for Control {
    async fn complete_session(&self, auth_id: &str, user: &User) -> Result<Node, CompleteError> {
        self.complete_auth_session(auth_id, user.id)
            .await
            .map_err(|e| match e {
                ApiError::NotFound(_) => CompleteError::Gone,
                ApiError::Conflict(_) => CompleteError::AlreadyComplete,
                e => CompleteError::Other(e.to_string()),
            })
    }

    async fn user_updated(&self, user: &User) {
        self.refresh_user(user);
        // New identity-provider groups may make autoApprovers cover routes the user's
        // nodes already advertise.
        let nodes = match self.inner.store.list_nodes_by_user(user.id).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(user = user.id.0, error = %e, "route auto-approval skipped");
                return;
            }
        };
        if let Err(e) = self.reapprove_routes(nodes).await {
            tracing::warn!(user = user.id.0, error = %e, "route auto-approval failed");
        }
    }
}
