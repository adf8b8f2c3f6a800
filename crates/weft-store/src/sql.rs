//! The SQL shared by both backends, and `impl_store!`, which instantiates the
//! [`crate::Store`] implementation once per sqlx database type.
//!
//! The backend type passed to `impl_store!` must have a `pool` field and two inherent methods:
//! `begin_write(&self) -> StoreResult<Transaction<'static, DB>>` (a transaction that
//! will write) and `lock_allocation(tx) -> StoreResult<()>` (serialises address allocation).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use crate::StoreError;

/// How many times node creation is retried after losing a race on a unique column.
pub(crate) const CREATE_NODE_ATTEMPTS: u32 = 16;

macro_rules! user_cols {
    () => {
        "id, name, display_name, email, profile_pic_url, provider, provider_subject, groups_json, created_at"
    };
}
macro_rules! key_cols {
    () => {
        "id, user_id, key_prefix, key_hash, reusable, ephemeral, pre_approved, tags_json, used, use_count, expiration, created_at"
    };
}
macro_rules! node_cols {
    () => {
        "id, machine_key, node_key, disco_key, nl_key, user_id, hostname, given_name, ipv4, ipv6, hostinfo_json, \
         endpoints_json, tags_json, approved_routes_json, auth_key_id, ephemeral, approved, expiry, \
         key_expiry_disabled, last_seen, created_at, updated_at, key_signature"
    };
}
macro_rules! session_cols {
    () => {
        "auth_id, machine_key, node_key, old_node_key, hostinfo_json, ephemeral, requested_expiry, created_at, \
         expires_at, completed_user_id, completed_node_id"
    };
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::RowNotFound = e {
            return StoreError::NotFound("row".into());
        }
        if let Some(db) = e.as_database_error() {
            if db.is_unique_violation() {
                return StoreError::Conflict(db.message().to_owned());
            }
            if db.is_foreign_key_violation() {
                return StoreError::Conflict(format!(
                    "still referenced or refers to a missing row: {}",
                    db.message()
                ));
            }
        }
        StoreError::Database(e)
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Unix nanoseconds, saturating outside 1678..2262.
pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    let n = t.unix_timestamp_nanos();
    i64::try_from(n).unwrap_or(if n < 0 { i64::MIN } else { i64::MAX })
}

pub(crate) fn ts_opt(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(ts)
}

pub(crate) fn from_ts(n: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub(crate) fn from_ts_opt(n: Option<i64>) -> Option<OffsetDateTime> {
    n.map(from_ts)
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

pub(crate) fn from_json<T: DeserializeOwned>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Decode(format!("{what}: {e}")))
}

pub(crate) fn parse_key<K>(s: &str, what: &str) -> Result<K, StoreError>
where
    K: FromStr + Default,
    K::Err: std::fmt::Display,
{
    if s.is_empty() {
        return Ok(K::default());
    }
    s.parse()
        .map_err(|e| StoreError::Decode(format!("{what}: {e}")))
}

pub(crate) fn parse_addr<A: FromStr>(s: &str, what: &str) -> Result<A, StoreError> {
    s.parse()
        .map_err(|_| StoreError::Decode(format!("{what}: bad address {s:?}")))
}

pub(crate) fn used_sets(
    rows: Vec<(String, String)>,
) -> Result<(BTreeSet<Ipv4Addr>, BTreeSet<Ipv6Addr>), StoreError> {
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for (a, b) in rows {
        v4.insert(parse_addr(&a, "nodes.ipv4")?);
        v6.insert(parse_addr(&b, "nodes.ipv6")?);
    }
    Ok((v4, v6))
}

/// The first of `base`, `base-1`, `base-2`, ... not in `taken`.
pub(crate) fn first_free_label(base: &str, taken: &BTreeSet<String>) -> String {
    (0u32..)
        .map(|n| crate::names::numbered_label(base, n))
        .find(|l| !taken.contains(l))
        .unwrap_or_else(|| base.to_owned())
}

pub(crate) fn check_label(label: &str) -> Result<(), StoreError> {
    if crate::names::dns_label(label) == label {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{label:?} is not a lowercase DNS label"
        )))
    }
}

pub(crate) fn hostname_from_hostinfo(h: &serde_json::Value) -> Option<String> {
    h.get("Hostname")
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

macro_rules! impl_store {
    ($ty:ty, $db:ty, $backend:expr) => {
        use sqlx::Row as _;
        use $crate::sql::{
            check_label, first_free_label, from_json, from_ts, from_ts_opt, hostname_from_hostinfo,
            is_unique_violation, now, parse_addr, parse_key, to_json, ts, ts_opt, used_sets, CREATE_NODE_ATTEMPTS,
        };
        use $crate::*;

        type DbRow = <$db as sqlx::Database>::Row;
        type Tx = sqlx::Transaction<'static, $db>;

        fn user_from_row(r: &DbRow) -> StoreResult<User> {
            Ok(User {
                id: UserId(r.try_get("id")?),
                name: r.try_get("name")?,
                display_name: r.try_get("display_name")?,
                email: r.try_get("email")?,
                profile_pic_url: r.try_get("profile_pic_url")?,
                provider: r.try_get("provider")?,
                provider_subject: r.try_get("provider_subject")?,
                groups: from_json(&r.try_get::<String, _>("groups_json")?, "users.groups_json")?,
                created_at: from_ts(r.try_get("created_at")?),
            })
        }

        fn key_from_row(r: &DbRow) -> StoreResult<PreauthKey> {
            Ok(PreauthKey {
                id: PreauthKeyId(r.try_get("id")?),
                user_id: UserId(r.try_get("user_id")?),
                prefix: r.try_get("key_prefix")?,
                reusable: r.try_get("reusable")?,
                ephemeral: r.try_get("ephemeral")?,
                pre_approved: r.try_get("pre_approved")?,
                tags: from_json(&r.try_get::<String, _>("tags_json")?, "preauth_keys.tags_json")?,
                used: r.try_get("used")?,
                use_count: r.try_get("use_count")?,
                expiration: from_ts_opt(r.try_get("expiration")?),
                created_at: from_ts(r.try_get("created_at")?),
            })
        }

        fn node_from_row(r: &DbRow) -> StoreResult<Node> {
            Ok(Node {
                id: NodeId(r.try_get("id")?),
                machine_key: parse_key(&r.try_get::<String, _>("machine_key")?, "nodes.machine_key")?,
                node_key: parse_key(&r.try_get::<String, _>("node_key")?, "nodes.node_key")?,
                disco_key: parse_key(&r.try_get::<String, _>("disco_key")?, "nodes.disco_key")?,
                nl_key: parse_key(&r.try_get::<String, _>("nl_key")?, "nodes.nl_key")?,
                user_id: UserId(r.try_get("user_id")?),
                hostname: r.try_get("hostname")?,
                given_name: r.try_get("given_name")?,
                ipv4: parse_addr(&r.try_get::<String, _>("ipv4")?, "nodes.ipv4")?,
                ipv6: parse_addr(&r.try_get::<String, _>("ipv6")?, "nodes.ipv6")?,
                hostinfo: from_json(&r.try_get::<String, _>("hostinfo_json")?, "nodes.hostinfo_json")?,
                endpoints: from_json(&r.try_get::<String, _>("endpoints_json")?, "nodes.endpoints_json")?,
                tags: from_json(&r.try_get::<String, _>("tags_json")?, "nodes.tags_json")?,
                approved_routes: from_json(
                    &r.try_get::<String, _>("approved_routes_json")?,
                    "nodes.approved_routes_json",
                )?,
                auth_key_id: r.try_get::<Option<i64>, _>("auth_key_id")?.map(PreauthKeyId),
                ephemeral: r.try_get("ephemeral")?,
                approved: r.try_get("approved")?,
                expiry: from_ts_opt(r.try_get("expiry")?),
                key_expiry_disabled: r.try_get("key_expiry_disabled")?,
                last_seen: from_ts_opt(r.try_get("last_seen")?),
                created_at: from_ts(r.try_get("created_at")?),
                updated_at: from_ts(r.try_get("updated_at")?),
                key_signature: r.try_get("key_signature")?,
            })
        }

        fn session_from_row(r: &DbRow) -> StoreResult<RegistrationSession> {
            Ok(RegistrationSession {
                auth_id: r.try_get("auth_id")?,
                machine_key: parse_key(&r.try_get::<String, _>("machine_key")?, "sessions.machine_key")?,
                node_key: parse_key(&r.try_get::<String, _>("node_key")?, "sessions.node_key")?,
                old_node_key: parse_key(&r.try_get::<String, _>("old_node_key")?, "sessions.old_node_key")?,
                hostinfo: from_json(&r.try_get::<String, _>("hostinfo_json")?, "sessions.hostinfo_json")?,
                ephemeral: r.try_get("ephemeral")?,
                requested_expiry: from_ts_opt(r.try_get("requested_expiry")?),
                created_at: from_ts(r.try_get("created_at")?),
                expires_at: from_ts(r.try_get("expires_at")?),
                completed_user_id: r.try_get::<Option<i64>, _>("completed_user_id")?.map(UserId),
                completed_node_id: r.try_get::<Option<i64>, _>("completed_node_id")?.map(NodeId),
            })
        }

        fn policy_from_row(r: &DbRow) -> StoreResult<PolicyRecord> {
            Ok(PolicyRecord {
                id: r.try_get("id")?,
                text: r.try_get("text")?,
                author: r.try_get("author")?,
                created_at: from_ts(r.try_get("created_at")?),
            })
        }

        fn audit_from_row(r: &DbRow) -> StoreResult<AuditEntry> {
            Ok(AuditEntry {
                id: r.try_get("id")?,
                at: from_ts(r.try_get("at")?),
                actor: r.try_get("actor")?,
                action: r.try_get("action")?,
                target: r.try_get("target")?,
                detail: from_json(&r.try_get::<String, _>("detail_json")?, "audit_log.detail_json")?,
            })
        }

        fn one<T>(row: Option<DbRow>, what: impl FnOnce() -> String, f: fn(&DbRow) -> StoreResult<T>) -> StoreResult<T> {
            match row {
                Some(r) => f(&r),
                None => Err(StoreError::NotFound(what())),
            }
        }

        fn all<T>(rows: Vec<DbRow>, f: fn(&DbRow) -> StoreResult<T>) -> StoreResult<Vec<T>> {
            rows.iter().map(f).collect()
        }

        async fn user_exists(tx: &mut Tx, id: UserId) -> StoreResult<bool> {
            let r = sqlx::query("SELECT id FROM users WHERE id = $1").bind(id.0).fetch_optional(&mut **tx).await?;
            Ok(r.is_some())
        }

        async fn node_exists(tx: &mut Tx, id: NodeId) -> StoreResult<bool> {
            let r = sqlx::query("SELECT id FROM nodes WHERE id = $1").bind(id.0).fetch_optional(&mut **tx).await?;
            Ok(r.is_some())
        }

        /// Consumes one use of a pre-auth key inside `tx`.
        async fn consume_key(tx: &mut Tx, kid: PreauthKeyId, now: OffsetDateTime) -> StoreResult<()> {
            let res = sqlx::query(
                "UPDATE preauth_keys SET used = TRUE, use_count = use_count + 1 \
                 WHERE id = $1 AND (reusable OR NOT used) AND (expiration IS NULL OR expiration > $2)",
            )
            .bind(kid.0)
            .bind(ts(now))
            .execute(&mut **tx)
            .await?;
            if res.rows_affected() > 0 {
                return Ok(());
            }
            let exists = sqlx::query("SELECT id FROM preauth_keys WHERE id = $1")
                .bind(kid.0)
                .fetch_optional(&mut **tx)
                .await?;
            Err(match exists {
                Some(_) => StoreError::Conflict(format!("pre-auth key {kid} is spent or expired")),
                None => StoreError::NotFound(format!("pre-auth key {kid}")),
            })
        }

        impl $ty {
            async fn update_node_returning(&self, q: sqlx::query::Query<'_, $db, <$db as sqlx::Database>::Arguments>, id: NodeId) -> StoreResult<Node> {
                let row = q.fetch_optional(&self.pool).await?;
                one(row, || format!("node {id}"), node_from_row)
            }

            /// One attempt at creating a node; `Ok(None)` = lost a race on a unique column, retry.
            async fn try_create_node(&self, new: &NewNode, now: OffsetDateTime) -> StoreResult<Option<Node>> {
                let mut tx = self.begin_write().await?;
                Self::lock_allocation(&mut tx).await?;
                if !user_exists(&mut tx, new.user_id).await? {
                    return Err(StoreError::NotFound(format!("user {}", new.user_id)));
                }
                if let Some(kid) = new.auth_key_id {
                    consume_key(&mut tx, kid, now).await?;
                }
                let dup = sqlx::query("SELECT id FROM nodes WHERE machine_key = $1 OR node_key = $2")
                    .bind(new.machine_key.to_text())
                    .bind(new.node_key.to_text())
                    .fetch_optional(&mut *tx)
                    .await?;
                if dup.is_some() {
                    return Err(StoreError::Conflict("machine key or node key already registered".into()));
                }
                let used: Vec<(String, String)> =
                    sqlx::query_as("SELECT ipv4, ipv6 FROM nodes").fetch_all(&mut *tx).await?;
                let (used4, used6) = used_sets(used)?;
                let Some((v4, v6)) = next_addresses(&used4, &used6) else {
                    return Err(StoreError::AddressesExhausted);
                };
                let base = names::dns_label(&new.given_name_base);
                let taken: Vec<(String,)> = sqlx::query_as("SELECT given_name FROM nodes WHERE given_name LIKE $1")
                    .bind(format!("{base}%"))
                    .fetch_all(&mut *tx)
                    .await?;
                let taken = taken.into_iter().map(|(n,)| n).collect();
                let given_name = first_free_label(&base, &taken);
                let inserted = sqlx::query(concat!(
                    "INSERT INTO nodes (machine_key, node_key, disco_key, nl_key, user_id, hostname, given_name, \
                     ipv4, ipv6, hostinfo_json, endpoints_json, tags_json, approved_routes_json, auth_key_id, \
                     ephemeral, approved, expiry, key_expiry_disabled, last_seen, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, FALSE, \
                     NULL, $18, $18) RETURNING ",
                    node_cols!()
                ))
                .bind(new.machine_key.to_text())
                .bind(new.node_key.to_text())
                .bind(new.disco_key.to_text())
                .bind(new.nl_key.to_text())
                .bind(new.user_id.0)
                .bind(&new.hostname)
                .bind(&given_name)
                .bind(v4.to_string())
                .bind(v6.to_string())
                .bind(to_json(&new.hostinfo))
                .bind(to_json(&new.endpoints))
                .bind(to_json(&new.tags))
                .bind(to_json(&new.approved_routes))
                .bind(new.auth_key_id.map(|k| k.0))
                .bind(new.ephemeral)
                .bind(new.approved)
                .bind(ts_opt(new.expiry))
                .bind(ts(now))
                .fetch_one(&mut *tx)
                .await;
                let row = match inserted {
                    Ok(row) => row,
                    Err(e) if is_unique_violation(&e) => {
                        tracing::debug!(error = %e, "node insert lost a race; retrying");
                        return Ok(None);
                    }
                    Err(e) => return Err(e.into()),
                };
                let node = node_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(node))
            }
        }

        #[async_trait::async_trait]
        impl Store for $ty {
            fn backend(&self) -> Backend {
                $backend
            }

            async fn close(&self) {
                self.pool.close().await;
            }

            // ----- users -----

            async fn create_user(&self, new: NewUser) -> StoreResult<User> {
                let row = sqlx::query(concat!(
                    "INSERT INTO users (name, display_name, email, profile_pic_url, provider, provider_subject, \
                     groups_json, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
                    user_cols!()
                ))
                .bind(&new.name)
                .bind(&new.display_name)
                .bind(&new.email)
                .bind(&new.profile_pic_url)
                .bind(&new.provider)
                .bind(new.provider_subject.as_deref().filter(|s| !s.is_empty()))
                .bind(to_json(&new.groups))
                .bind(ts(now()))
                .fetch_one(&self.pool)
                .await?;
                user_from_row(&row)
            }

            async fn list_users(&self) -> StoreResult<Vec<User>> {
                let rows = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?;
                all(rows, user_from_row)
            }

            async fn get_user(&self, id: UserId) -> StoreResult<User> {
                let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("user {id}"), user_from_row)
            }

            async fn get_user_by_name(&self, name: &str) -> StoreResult<User> {
                let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE name = $1"))
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("user {name:?}"), user_from_row)
            }

            async fn get_user_by_provider_subject(&self, subject: &str) -> StoreResult<User> {
                let row = sqlx::query(concat!("SELECT ", user_cols!(), " FROM users WHERE provider_subject = $1"))
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("user with subject {subject:?}"), user_from_row)
            }

            async fn rename_user(&self, id: UserId, new_name: &str) -> StoreResult<User> {
                let row = sqlx::query(concat!("UPDATE users SET name = $2 WHERE id = $1 RETURNING ", user_cols!()))
                    .bind(id.0)
                    .bind(new_name)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("user {id}"), user_from_row)
            }

            async fn update_user_profile(&self, id: UserId, u: UserProfileUpdate) -> StoreResult<User> {
                let row = sqlx::query(concat!(
                    "UPDATE users SET display_name = $2, email = $3, profile_pic_url = $4, groups_json = $5 \
                     WHERE id = $1 RETURNING ",
                    user_cols!()
                ))
                .bind(id.0)
                .bind(&u.display_name)
                .bind(&u.email)
                .bind(&u.profile_pic_url)
                .bind(to_json(&u.groups))
                .fetch_optional(&self.pool)
                .await?;
                one(row, || format!("user {id}"), user_from_row)
            }

            async fn delete_user(&self, id: UserId) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let owns = sqlx::query("SELECT id FROM nodes WHERE user_id = $1 LIMIT 1")
                    .bind(id.0)
                    .fetch_optional(&mut *tx)
                    .await?;
                if owns.is_some() {
                    return Err(StoreError::Conflict(format!("user {id} still owns nodes")));
                }
                let res = sqlx::query("DELETE FROM users WHERE id = $1").bind(id.0).execute(&mut *tx).await?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {id}")));
                }
                tx.commit().await?;
                Ok(())
            }

            // ----- pre-auth keys -----

            async fn create_preauth_key(&self, new: NewPreauthKey) -> StoreResult<(PreauthKey, String)> {
                let generated = generate_auth_key();
                let mut tx = self.begin_write().await?;
                if !user_exists(&mut tx, new.user_id).await? {
                    return Err(StoreError::NotFound(format!("user {}", new.user_id)));
                }
                let row = sqlx::query(concat!(
                    "INSERT INTO preauth_keys (user_id, key_prefix, key_hash, reusable, ephemeral, pre_approved, \
                     tags_json, used, use_count, expiration, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, FALSE, 0, $8, $9) RETURNING ",
                    key_cols!()
                ))
                .bind(new.user_id.0)
                .bind(&generated.prefix)
                .bind(generated.hash.to_vec())
                .bind(new.reusable)
                .bind(new.ephemeral)
                .bind(new.pre_approved)
                .bind(to_json(&new.tags))
                .bind(ts_opt(new.expiration))
                .bind(ts(now()))
                .fetch_one(&mut *tx)
                .await?;
                let key = key_from_row(&row)?;
                tx.commit().await?;
                Ok((key, generated.full))
            }

            async fn list_preauth_keys(&self, user: Option<UserId>) -> StoreResult<Vec<PreauthKey>> {
                let rows = match user {
                    Some(u) => {
                        sqlx::query(concat!("SELECT ", key_cols!(), " FROM preauth_keys WHERE user_id = $1 ORDER BY id"))
                            .bind(u.0)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    None => {
                        sqlx::query(concat!("SELECT ", key_cols!(), " FROM preauth_keys ORDER BY id"))
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                all(rows, key_from_row)
            }

            async fn get_preauth_key(&self, id: PreauthKeyId) -> StoreResult<PreauthKey> {
                let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM preauth_keys WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("pre-auth key {id}"), key_from_row)
            }

            async fn get_preauth_key_by_key(&self, presented: &str) -> StoreResult<PreauthKey> {
                let not_found = || StoreError::NotFound("pre-auth key".into());
                let Some((prefix, secret)) = parse_auth_key(presented) else {
                    return Err(not_found());
                };
                let row = sqlx::query(concat!("SELECT ", key_cols!(), " FROM preauth_keys WHERE key_prefix = $1"))
                    .bind(prefix)
                    .fetch_optional(&self.pool)
                    .await?;
                let Some(row) = row else {
                    return Err(not_found());
                };
                let hash: Vec<u8> = row.try_get("key_hash")?;
                if !secret_matches(secret, &hash) {
                    return Err(not_found());
                }
                key_from_row(&row)
            }

            async fn expire_preauth_key(&self, id: PreauthKeyId, now: OffsetDateTime) -> StoreResult<PreauthKey> {
                let row = sqlx::query(concat!(
                    "UPDATE preauth_keys SET expiration = CASE WHEN expiration IS NULL OR expiration > $2 \
                     THEN $2 ELSE expiration END WHERE id = $1 RETURNING ",
                    key_cols!()
                ))
                .bind(id.0)
                .bind(ts(now))
                .fetch_optional(&self.pool)
                .await?;
                one(row, || format!("pre-auth key {id}"), key_from_row)
            }

            async fn mark_preauth_key_used(&self, id: PreauthKeyId, now: OffsetDateTime) -> StoreResult<PreauthKey> {
                let row = sqlx::query(concat!(
                    "UPDATE preauth_keys SET used = TRUE, use_count = use_count + 1 \
                     WHERE id = $1 AND (reusable OR NOT used) AND (expiration IS NULL OR expiration > $2) RETURNING ",
                    key_cols!()
                ))
                .bind(id.0)
                .bind(ts(now))
                .fetch_optional(&self.pool)
                .await?;
                match row {
                    Some(r) => key_from_row(&r),
                    None => {
                        self.get_preauth_key(id).await?;
                        Err(StoreError::Conflict(format!("pre-auth key {id} is spent or expired")))
                    }
                }
            }

            async fn delete_preauth_key(&self, id: PreauthKeyId) -> StoreResult<()> {
                let res = sqlx::query("DELETE FROM preauth_keys WHERE id = $1").bind(id.0).execute(&self.pool).await?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("pre-auth key {id}")));
                }
                Ok(())
            }

            // ----- nodes -----

            async fn create_node(&self, new: NewNode, now: OffsetDateTime) -> StoreResult<Node> {
                for _ in 0..CREATE_NODE_ATTEMPTS {
                    if let Some(node) = self.try_create_node(&new, now).await? {
                        tracing::info!(node = %node.id, ipv4 = %node.ipv4, name = %node.given_name, "node created");
                        return Ok(node);
                    }
                }
                Err(StoreError::Conflict("node creation kept losing races on unique columns".into()))
            }

            async fn list_nodes(&self) -> StoreResult<Vec<Node>> {
                let rows = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes ORDER BY id"))
                    .fetch_all(&self.pool)
                    .await?;
                all(rows, node_from_row)
            }

            async fn list_nodes_by_user(&self, user: UserId) -> StoreResult<Vec<Node>> {
                let rows = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes WHERE user_id = $1 ORDER BY id"))
                    .bind(user.0)
                    .fetch_all(&self.pool)
                    .await?;
                all(rows, node_from_row)
            }

            async fn get_node(&self, id: NodeId) -> StoreResult<Node> {
                let row = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("node {id}"), node_from_row)
            }

            async fn get_node_by_machine_key(&self, key: &weft_key::MachinePublic) -> StoreResult<Node> {
                let row = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes WHERE machine_key = $1"))
                    .bind(key.to_text())
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("node with {}", key.short()), node_from_row)
            }

            async fn get_node_by_node_key(&self, key: &weft_key::NodePublic) -> StoreResult<Node> {
                let row = sqlx::query(concat!("SELECT ", node_cols!(), " FROM nodes WHERE node_key = $1"))
                    .bind(key.to_text())
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || format!("node with {}", key.short()), node_from_row)
            }

            async fn update_node_key(
                &self,
                id: NodeId,
                key: weft_key::NodePublic,
                expiry: Option<OffsetDateTime>,
            ) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET node_key = $2, expiry = $3, updated_at = $4 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(key.to_text())
                .bind(ts_opt(expiry))
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn reregister_node(&self, id: NodeId, r: NodeReregistration, now: OffsetDateTime) -> StoreResult<Node> {
                let mut tx = self.begin_write().await?;
                if !node_exists(&mut tx, id).await? {
                    return Err(StoreError::NotFound(format!("node {id}")));
                }
                if !user_exists(&mut tx, r.user_id).await? {
                    return Err(StoreError::NotFound(format!("user {}", r.user_id)));
                }
                if let Some(kid) = r.auth_key_id {
                    consume_key(&mut tx, kid, now).await?;
                }
                let hostname = r.hostinfo.as_ref().and_then(hostname_from_hostinfo);
                let row = sqlx::query(concat!(
                    "UPDATE nodes SET node_key = $2, user_id = $3, hostinfo_json = COALESCE($4, hostinfo_json), \
                     hostname = COALESCE($5, hostname), expiry = $6, auth_key_id = COALESCE($7, auth_key_id), \
                     tags_json = COALESCE($8, tags_json), ephemeral = $9, approved = COALESCE($10, approved), \
                     updated_at = $11 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(r.node_key.to_text())
                .bind(r.user_id.0)
                .bind(r.hostinfo.as_ref().map(|h| to_json(h)))
                .bind(hostname)
                .bind(ts_opt(r.expiry))
                .bind(r.auth_key_id.map(|k| k.0))
                .bind(r.tags.as_ref().map(|t| to_json(t)))
                .bind(r.ephemeral)
                .bind(r.approved)
                .bind(ts(now))
                .fetch_one(&mut *tx)
                .await?;
                let node = node_from_row(&row)?;
                tx.commit().await?;
                Ok(node)
            }

            async fn update_node_live(&self, id: NodeId, u: NodeLiveUpdate) -> StoreResult<Node> {
                let hostname = u.hostinfo.as_ref().and_then(hostname_from_hostinfo);
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET disco_key = COALESCE($2, disco_key), endpoints_json = COALESCE($3, endpoints_json), \
                     hostinfo_json = COALESCE($4, hostinfo_json), hostname = COALESCE($5, hostname), \
                     last_seen = COALESCE($6, last_seen), updated_at = $7 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(u.disco_key.map(|k| k.to_text()))
                .bind(u.endpoints.as_ref().map(|e| to_json(e)))
                .bind(u.hostinfo.as_ref().map(|h| to_json(h)))
                .bind(hostname)
                .bind(ts_opt(u.last_seen))
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_expiry(&self, id: NodeId, expiry: Option<OffsetDateTime>) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET expiry = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(ts_opt(expiry))
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_key_expiry_disabled(&self, id: NodeId, disabled: bool) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET key_expiry_disabled = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(disabled)
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_approved(&self, id: NodeId, approved: bool) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET approved = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(approved)
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_tags(&self, id: NodeId, tags: Vec<String>) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET tags_json = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(to_json(&tags))
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_approved_routes(&self, id: NodeId, routes: Vec<ipnet::IpNet>) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET approved_routes_json = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(to_json(&routes))
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn set_node_user(&self, id: NodeId, user: UserId) -> StoreResult<Node> {
                let mut tx = self.begin_write().await?;
                if !user_exists(&mut tx, user).await? {
                    return Err(StoreError::NotFound(format!("user {user}")));
                }
                let row = sqlx::query(concat!(
                    "UPDATE nodes SET user_id = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(user.0)
                .bind(ts(now()))
                .fetch_optional(&mut *tx)
                .await?;
                let node = one(row, || format!("node {id}"), node_from_row)?;
                tx.commit().await?;
                Ok(node)
            }

            async fn rename_node(&self, id: NodeId, given_name: &str) -> StoreResult<Node> {
                check_label(given_name)?;
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET given_name = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(given_name)
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn delete_node(&self, id: NodeId) -> StoreResult<()> {
                let res = sqlx::query("DELETE FROM nodes WHERE id = $1").bind(id.0).execute(&self.pool).await?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("node {id}")));
                }
                Ok(())
            }

            async fn unique_given_name(&self, base: &str) -> StoreResult<String> {
                let base = names::dns_label(base);
                let taken: Vec<(String,)> = sqlx::query_as("SELECT given_name FROM nodes WHERE given_name LIKE $1")
                    .bind(format!("{base}%"))
                    .fetch_all(&self.pool)
                    .await?;
                let taken = taken.into_iter().map(|(n,)| n).collect();
                Ok(first_free_label(&base, &taken))
            }

            // ----- sessions -----

            async fn create_session(
                &self,
                new: NewRegistrationSession,
                now: OffsetDateTime,
            ) -> StoreResult<RegistrationSession> {
                let row = sqlx::query(concat!(
                    "INSERT INTO registration_sessions (auth_id, machine_key, node_key, old_node_key, hostinfo_json, \
                     ephemeral, requested_expiry, created_at, expires_at, completed_user_id, completed_node_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL) RETURNING ",
                    session_cols!()
                ))
                .bind(&new.auth_id)
                .bind(new.machine_key.to_text())
                .bind(new.node_key.to_text())
                .bind(new.old_node_key.to_text())
                .bind(to_json(&new.hostinfo))
                .bind(new.ephemeral)
                .bind(ts_opt(new.requested_expiry))
                .bind(ts(now))
                .bind(ts(new.expires_at))
                .fetch_one(&self.pool)
                .await?;
                session_from_row(&row)
            }

            async fn get_session(&self, auth_id: &str) -> StoreResult<RegistrationSession> {
                let row = sqlx::query(concat!("SELECT ", session_cols!(), " FROM registration_sessions WHERE auth_id = $1"))
                    .bind(auth_id)
                    .fetch_optional(&self.pool)
                    .await?;
                one(row, || "registration session".to_owned(), session_from_row)
            }

            async fn list_pending_sessions(&self, now: OffsetDateTime) -> StoreResult<Vec<RegistrationSession>> {
                let rows = sqlx::query(concat!(
                    "SELECT ",
                    session_cols!(),
                    " FROM registration_sessions WHERE completed_user_id IS NULL AND expires_at > $1 \
                     ORDER BY created_at, auth_id"
                ))
                .bind(ts(now))
                .fetch_all(&self.pool)
                .await?;
                all(rows, session_from_row)
            }

            async fn complete_session(&self, auth_id: &str, user: UserId, node: NodeId) -> StoreResult<RegistrationSession> {
                let mut tx = self.begin_write().await?;
                if !user_exists(&mut tx, user).await? {
                    return Err(StoreError::NotFound(format!("user {user}")));
                }
                if !node_exists(&mut tx, node).await? {
                    return Err(StoreError::NotFound(format!("node {node}")));
                }
                let row = sqlx::query(concat!(
                    "UPDATE registration_sessions SET completed_user_id = $2, completed_node_id = $3 \
                     WHERE auth_id = $1 AND completed_user_id IS NULL RETURNING ",
                    session_cols!()
                ))
                .bind(auth_id)
                .bind(user.0)
                .bind(node.0)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    let exists = sqlx::query("SELECT auth_id FROM registration_sessions WHERE auth_id = $1")
                        .bind(auth_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Err(match exists {
                        Some(_) => StoreError::Conflict("registration session already completed".into()),
                        None => StoreError::NotFound("registration session".into()),
                    });
                };
                let s = session_from_row(&row)?;
                tx.commit().await?;
                Ok(s)
            }

            async fn delete_session(&self, auth_id: &str) -> StoreResult<()> {
                let res = sqlx::query("DELETE FROM registration_sessions WHERE auth_id = $1")
                    .bind(auth_id)
                    .execute(&self.pool)
                    .await?;
                if res.rows_affected() == 0 {
                    return Err(StoreError::NotFound("registration session".into()));
                }
                Ok(())
            }

            async fn delete_expired_sessions(&self, now: OffsetDateTime) -> StoreResult<u64> {
                let res = sqlx::query("DELETE FROM registration_sessions WHERE expires_at <= $1")
                    .bind(ts(now))
                    .execute(&self.pool)
                    .await?;
                Ok(res.rows_affected())
            }

            // ----- policy -----

            async fn put_policy(&self, text: &str, author: &str) -> StoreResult<PolicyRecord> {
                let row = sqlx::query(
                    "INSERT INTO policies (text, author, created_at) VALUES ($1, $2, $3) \
                     RETURNING id, text, author, created_at",
                )
                .bind(text)
                .bind(author)
                .bind(ts(now()))
                .fetch_one(&self.pool)
                .await?;
                policy_from_row(&row)
            }

            async fn current_policy(&self) -> StoreResult<Option<PolicyRecord>> {
                let row = sqlx::query("SELECT id, text, author, created_at FROM policies ORDER BY id DESC LIMIT 1")
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(policy_from_row).transpose()
            }

            async fn policy_history(&self, limit: u32) -> StoreResult<Vec<PolicyRecord>> {
                let rows = sqlx::query("SELECT id, text, author, created_at FROM policies ORDER BY id DESC LIMIT $1")
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await?;
                all(rows, policy_from_row)
            }

            // ----- audit -----

            async fn append_audit(&self, e: NewAuditEntry) -> StoreResult<AuditEntry> {
                let row = sqlx::query(
                    "INSERT INTO audit_log (at, actor, action, target, detail_json) VALUES ($1, $2, $3, $4, $5) \
                     RETURNING id, at, actor, action, target, detail_json",
                )
                .bind(ts(now()))
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.target)
                .bind(to_json(&e.detail))
                .fetch_one(&self.pool)
                .await?;
                audit_from_row(&row)
            }

            async fn list_audit(&self, limit: u32, before: Option<i64>) -> StoreResult<Vec<AuditEntry>> {
                let rows = sqlx::query(
                    "SELECT id, at, actor, action, target, detail_json FROM audit_log \
                     WHERE id < COALESCE($1, 9223372036854775807) ORDER BY id DESC LIMIT $2",
                )
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
                all(rows, audit_from_row)
            }

            // ----- kv -----

            async fn kv_get(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
                let row: Option<(Vec<u8>,)> = sqlx::query_as("SELECT value FROM server_state WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?;
                Ok(row.map(|(v,)| v))
            }

            async fn tka_state(&self) -> StoreResult<Option<TkaState>> {
                let row = sqlx::query(
                    "SELECT mode, genesis_hash, head, disablement_secret, support_disablement, updated_at \
                     FROM tka_state WHERE id = 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                let Some(r) = row else { return Ok(None) };
                let mode: String = r.try_get("mode")?;
                Ok(Some(TkaState {
                    mode: TkaMode::parse(&mode)
                        .ok_or_else(|| StoreError::Decode(format!("tka_state.mode {mode:?}")))?,
                    genesis_hash: r.try_get("genesis_hash")?,
                    head: r.try_get("head")?,
                    disablement_secret: r.try_get("disablement_secret")?,
                    support_disablement: r.try_get("support_disablement")?,
                    updated_at: from_ts(r.try_get("updated_at")?),
                }))
            }

            async fn tka_aums(&self) -> StoreResult<Vec<TkaAumRecord>> {
                let rows = sqlx::query("SELECT hash, parent, data FROM tka_aums ORDER BY seq")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(TkaAumRecord {
                            hash: r.try_get("hash")?,
                            parent: r.try_get("parent")?,
                            data: r.try_get("data")?,
                        })
                    })
                    .collect()
            }

            async fn tka_commit(&self, commit: TkaCommit) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let at = ts(commit.state.updated_at);
                if commit.reset {
                    sqlx::query("DELETE FROM tka_aums").execute(&mut *tx).await?;
                    sqlx::query("UPDATE nodes SET key_signature = NULL WHERE key_signature IS NOT NULL")
                        .execute(&mut *tx)
                        .await?;
                }
                let mut seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM tka_aums")
                    .fetch_one(&mut *tx)
                    .await?;
                for a in &commit.aums {
                    seq += 1;
                    sqlx::query(
                        "INSERT INTO tka_aums (hash, parent, data, seq, created_at) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT (hash) DO NOTHING",
                    )
                    .bind(a.hash.clone())
                    .bind(a.parent.clone())
                    .bind(a.data.clone())
                    .bind(seq)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                }
                for (id, sig) in &commit.signatures {
                    let res = sqlx::query("UPDATE nodes SET key_signature = $2, updated_at = $3 WHERE id = $1")
                        .bind(id.0)
                        .bind(sig.clone())
                        .bind(at)
                        .execute(&mut *tx)
                        .await?;
                    if res.rows_affected() == 0 {
                        return Err(StoreError::NotFound(format!("node {id}")));
                    }
                }
                let st = &commit.state;
                sqlx::query(
                    "INSERT INTO tka_state (id, mode, genesis_hash, head, disablement_secret, support_disablement, updated_at) \
                     VALUES (1, $1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET mode = excluded.mode, genesis_hash = excluded.genesis_hash, \
                     head = excluded.head, disablement_secret = excluded.disablement_secret, \
                     support_disablement = excluded.support_disablement, updated_at = excluded.updated_at",
                )
                .bind(st.mode.as_str())
                .bind(st.genesis_hash.clone())
                .bind(st.head.clone())
                .bind(st.disablement_secret.clone())
                .bind(st.support_disablement.clone())
                .bind(at)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_node_key_signature(&self, id: NodeId, signature: Option<Vec<u8>>) -> StoreResult<Node> {
                let q = sqlx::query(concat!(
                    "UPDATE nodes SET key_signature = $2, updated_at = $3 WHERE id = $1 RETURNING ",
                    node_cols!()
                ))
                .bind(id.0)
                .bind(signature)
                .bind(ts(now()));
                self.update_node_returning(q, id).await
            }

            async fn kv_put(&self, key: &str, value: &[u8]) -> StoreResult<()> {
                sqlx::query(
                    "INSERT INTO server_state (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value.to_vec())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn kv_delete(&self, key: &str) -> StoreResult<()> {
                sqlx::query("DELETE FROM server_state WHERE key = $1").bind(key).execute(&self.pool).await?;
                Ok(())
            }
        }
    };
}
