//! Mapping a verified identity to a stored user.

use weft_store::{NewUser, Store, StoreError, User, UserProfileUpdate};

use crate::Identity;

/// Why a user could not be created or refreshed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A user with the login name exists but belongs to another identity (or is local).
    #[error("a user named {0} already exists and is not linked to this login")]
    NameTaken(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// Finds the user of `id` (by issuer + subject) and refreshes its profile and groups, or
/// creates it (provider `oidc`, name [`Identity::login_name`]). Returns the user and
/// whether anything was written.
///
/// A local user that happens to have the same name is never taken over.
pub async fn upsert_user(store: &dyn Store, id: &Identity) -> Result<(User, bool), UserError> {
    let subject = id.provider_subject();
    let profile = UserProfileUpdate {
        display_name: id.name.clone().unwrap_or_default(),
        email: id.email.clone().unwrap_or_default(),
        profile_pic_url: id.picture.clone().unwrap_or_default(),
        groups: id.groups.clone(),
    };
    match store.get_user_by_provider_subject(&subject).await {
        Ok(u) => {
            let same = u.display_name == profile.display_name
                && u.email == profile.email
                && u.profile_pic_url == profile.profile_pic_url
                && u.groups == profile.groups;
            if same {
                return Ok((u, false));
            }
            let u = store.update_user_profile(u.id, profile).await?;
            tracing::info!(user = %u.name, groups = ?u.groups, "user profile refreshed from the identity provider");
            Ok((u, true))
        }
        Err(e) if e.is_not_found() => {
            let name = id.login_name();
            let new = NewUser {
                name: name.clone(),
                display_name: profile.display_name,
                email: profile.email,
                profile_pic_url: profile.profile_pic_url,
                provider: "oidc".into(),
                provider_subject: Some(subject),
                groups: profile.groups,
            };
            match store.create_user(new).await {
                Ok(u) => {
                    tracing::info!(user = %u.name, groups = ?u.groups, "user created from an OpenID Connect login");
                    Ok((u, true))
                }
                Err(e) if e.is_conflict() => Err(UserError::NameTaken(name)),
                Err(e) => Err(e.into()),
            }
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            issuer: "https://idp.example".into(),
            subject: "u-alice".into(),
            email: Some("alice@example.com".into()),
            email_verified: true,
            name: Some("Alice".into()),
            preferred_username: None,
            picture: None,
            groups: vec!["eng".into()],
        }
    }

    async fn store() -> (tempfile::TempDir, std::sync::Arc<dyn Store>) {
        let dir = tempfile::tempdir().unwrap();
        let s = weft_store::open(&weft_store::sqlite_url_for_dir(dir.path()))
            .await
            .unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn first_login_creates_and_later_logins_refresh_groups() {
        let (_d, s) = store().await;
        let (u, wrote) = upsert_user(&*s, &alice()).await.unwrap();
        assert!(wrote);
        assert_eq!(u.name, "alice@example.com");
        assert_eq!(u.provider, "oidc");
        assert_eq!(u.groups, vec!["eng"]);
        let (again, wrote) = upsert_user(&*s, &alice()).await.unwrap();
        assert!(!wrote);
        assert_eq!(again.id, u.id);
        let mut changed = alice();
        changed.groups = vec!["ops".into()];
        changed.email = Some("alice@new.example".into());
        let (u2, wrote) = upsert_user(&*s, &changed).await.unwrap();
        assert!(wrote);
        assert_eq!(u2.id, u.id);
        assert_eq!(u2.name, "alice@example.com");
        assert_eq!(s.get_user(u.id).await.unwrap().groups, vec!["ops"]);
    }

    #[tokio::test]
    async fn a_local_user_with_the_same_name_is_not_taken_over() {
        let (_d, s) = store().await;
        s.create_user(NewUser {
            name: "alice@example.com".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
        let r = upsert_user(&*s, &alice()).await;
        assert!(matches!(r, Err(UserError::NameTaken(n)) if n == "alice@example.com"));
        assert_eq!(s.list_users().await.unwrap().len(), 1);
    }
}
