//! Layer 2: the coordination server's persistent state.
//!
//! One object-safe async trait, [`Store`], with two implementations built on sqlx:
//! [`SqliteStore`] (the embedded default, `sqlite://DIR/weft.db`) and [`PgStore`]
//! (`postgres://...`, for production). [`open`] picks one from the URL scheme and
//! runs the embedded migrations (`migrations/sqlite`, `migrations/postgres`).
//!
//! Both implementations run the same SQL text (runtime queries, `$N` placeholders,
//! which sqlx's SQLite driver accepts too); only connection setup, migrations and
//! the write-transaction statement differ. Conventions:
//! - timestamps: [`time::OffsetDateTime`] in the API, `BIGINT` Unix nanoseconds in the DB;
//! - JSON (hostinfo, tags, endpoints, groups, routes, audit detail): `TEXT` in both DBs;
//! - keys: their `mkey:`/`nodekey:`/... text form;
//! - every multi-statement change runs in one transaction, so a failing call
//!   leaves the database unchanged.
//!
//! SQLite durability: WAL journal with `synchronous=FULL`, so a transaction is
//! on disk when its commit returns and survives SIGKILL or power loss.
//! Writers take the write lock up front (`BEGIN IMMEDIATE`); PostgreSQL node
//! creation serialises on a transaction-scoped advisory lock and retries on a
//! unique violation.

#[macro_use]
mod sql;
mod addr;
mod authkey;
mod model;
pub mod names;
mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;

pub use addr::{
    ipv4_reserved, ipv6_for, ipv6_reserved, next_addresses, IPV4_BASE, IPV4_SIZE, IPV6_BASE,
};
pub use authkey::{
    generate_auth_key, hash_secret, parse_auth_key, secret_matches, GeneratedAuthKey,
    AUTH_KEY_PREFIX,
};
pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for (or one it refers to) does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// A uniqueness or state rule was violated (duplicate key/name, spent pre-auth key,
    /// user still owning nodes).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The tailnet address range has no free address left.
    #[error("no free tailnet address left")]
    AddressesExhausted,
    /// An argument the store cannot accept.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A stored value did not decode (corrupt or foreign data).
    #[error("stored value does not decode: {0}")]
    Decode(String),
    /// The database URL is not `sqlite://...` or `postgres://...`.
    #[error("unsupported database url {0:?} (want sqlite:// or postgres://)")]
    UnsupportedUrl(String),
    /// Running migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Any other database error.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// Whether this is [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }

    /// Whether this is [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict(_))
    }
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The coordination server's storage. All methods are atomic: a call that returns
/// an error has changed nothing.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;
    /// Closes the connection pool (waits for in-flight calls).
    async fn close(&self);

    // ----- users -----
    /// Creates a user. `Conflict` if the name or provider subject is taken.
    async fn create_user(&self, new: NewUser) -> StoreResult<User>;
    /// All users, by id.
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// A user by id.
    async fn get_user(&self, id: UserId) -> StoreResult<User>;
    /// A user by unique name.
    async fn get_user_by_name(&self, name: &str) -> StoreResult<User>;
    /// A user by identity-provider subject.
    async fn get_user_by_provider_subject(&self, subject: &str) -> StoreResult<User>;
    /// Renames a user. `Conflict` if the name is taken.
    async fn rename_user(&self, id: UserId, new_name: &str) -> StoreResult<User>;
    /// Replaces display name, e-mail, picture and groups (OIDC refresh).
    async fn update_user_profile(&self, id: UserId, update: UserProfileUpdate)
        -> StoreResult<User>;
    /// Deletes a user and their pre-auth keys. `Conflict` while the user owns nodes.
    async fn delete_user(&self, id: UserId) -> StoreResult<()>;

    // ----- pre-auth keys -----
    /// Creates a key; returns the row and the full key string, which is never retrievable again.
    async fn create_preauth_key(&self, new: NewPreauthKey) -> StoreResult<(PreauthKey, String)>;
    /// Keys of one user, or of everyone; by id.
    async fn list_preauth_keys(&self, user: Option<UserId>) -> StoreResult<Vec<PreauthKey>>;
    /// A key by id.
    async fn get_preauth_key(&self, id: PreauthKeyId) -> StoreResult<PreauthKey>;
    /// Looks up a presented key string (prefix lookup + constant-time hash compare).
    /// `NotFound` for malformed, unknown or wrong keys. Does not check usability:
    /// see [`PreauthKey::is_usable`].
    async fn get_preauth_key_by_key(&self, presented: &str) -> StoreResult<PreauthKey>;
    /// Sets the key's expiration to `now` (if it was later or unset).
    async fn expire_preauth_key(
        &self,
        id: PreauthKeyId,
        now: OffsetDateTime,
    ) -> StoreResult<PreauthKey>;
    /// Consumes one use: `Conflict` if expired at `now` or single-use and already used.
    async fn mark_preauth_key_used(
        &self,
        id: PreauthKeyId,
        now: OffsetDateTime,
    ) -> StoreResult<PreauthKey>;
    /// Deletes a key (nodes it registered keep existing, with `auth_key_id` cleared).
    async fn delete_preauth_key(&self, id: PreauthKeyId) -> StoreResult<()>;

    // ----- nodes -----
    /// Creates a node: picks free addresses and a unique given name, and consumes
    /// `new.auth_key_id` (see [`NewNode::auth_key_id`]), all in one transaction.
    /// `NotFound` for an unknown user or key; `Conflict` for a used machine/node key
    /// or a spent key.
    async fn create_node(&self, new: NewNode, now: OffsetDateTime) -> StoreResult<Node>;
    /// All nodes, by id.
    async fn list_nodes(&self) -> StoreResult<Vec<Node>>;
    /// Nodes owned by one user, by id.
    async fn list_nodes_by_user(&self, user: UserId) -> StoreResult<Vec<Node>>;
    /// A node by id.
    async fn get_node(&self, id: NodeId) -> StoreResult<Node>;
    /// A node by machine key.
    async fn get_node_by_machine_key(&self, key: &weft_key::MachinePublic) -> StoreResult<Node>;
    /// A node by (current) node key.
    async fn get_node_by_node_key(&self, key: &weft_key::NodePublic) -> StoreResult<Node>;
    /// Node-key rotation: swaps the key, keeping id and addresses; sets `expiry`.
    /// `Conflict` if the new key belongs to another node.
    async fn update_node_key(
        &self,
        id: NodeId,
        key: weft_key::NodePublic,
        expiry: Option<OffsetDateTime>,
    ) -> StoreResult<Node>;
    /// Re-registration in place: new node key, owner, expiry, etc., keeping id and
    /// addresses, and consuming `r.auth_key_id` in the same transaction. `NotFound` for
    /// an unknown node, user or key; `Conflict` for a spent key or a node key that
    /// belongs to another node.
    async fn reregister_node(
        &self,
        id: NodeId,
        r: NodeReregistration,
        now: OffsetDateTime,
    ) -> StoreResult<Node>;
    /// Applies what a map request reports (disco key, endpoints, hostinfo, last seen).
    async fn update_node_live(&self, id: NodeId, update: NodeLiveUpdate) -> StoreResult<Node>;
    /// Sets or clears the key expiry.
    async fn set_node_expiry(
        &self,
        id: NodeId,
        expiry: Option<OffsetDateTime>,
    ) -> StoreResult<Node>;
    /// Disables or re-enables key expiry.
    async fn set_node_key_expiry_disabled(&self, id: NodeId, disabled: bool) -> StoreResult<Node>;
    /// Device approval.
    async fn set_node_approved(&self, id: NodeId, approved: bool) -> StoreResult<Node>;
    /// Replaces the tags.
    async fn set_node_tags(&self, id: NodeId, tags: Vec<String>) -> StoreResult<Node>;
    /// Replaces the approved routes.
    async fn set_node_approved_routes(
        &self,
        id: NodeId,
        routes: Vec<ipnet::IpNet>,
    ) -> StoreResult<Node>;
    /// Moves a node to another user. `NotFound` if either is missing.
    async fn set_node_user(&self, id: NodeId, user: UserId) -> StoreResult<Node>;
    /// Sets the MagicDNS label. `Conflict` if another node has it; `Invalid` if it is
    /// not a valid DNS label.
    async fn rename_node(&self, id: NodeId, given_name: &str) -> StoreResult<Node>;
    /// Deletes a node; its addresses become free.
    async fn delete_node(&self, id: NodeId) -> StoreResult<()>;
    /// `base` if no node uses it as given name, else the first free `base-1`, `base-2`, ...
    /// (`base` is first made a DNS label with [`names::dns_label`]).
    async fn unique_given_name(&self, base: &str) -> StoreResult<String>;

    // ----- interactive registration sessions -----
    /// Stores a pending session. `Conflict` if the auth id exists.
    async fn create_session(
        &self,
        new: NewRegistrationSession,
        now: OffsetDateTime,
    ) -> StoreResult<RegistrationSession>;
    /// A session by auth id (expired ones too; check `expires_at`).
    async fn get_session(&self, auth_id: &str) -> StoreResult<RegistrationSession>;
    /// Pending (not completed, not expired at `now`) sessions, oldest first.
    async fn list_pending_sessions(
        &self,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<RegistrationSession>>;
    /// Records who completed the session and which node it produced.
    /// `Conflict` if it was already completed.
    async fn complete_session(
        &self,
        auth_id: &str,
        user: UserId,
        node: NodeId,
    ) -> StoreResult<RegistrationSession>;
    /// Deletes a session.
    async fn delete_session(&self, auth_id: &str) -> StoreResult<()>;
    /// Deletes sessions expired at `now`; returns how many.
    async fn delete_expired_sessions(&self, now: OffsetDateTime) -> StoreResult<u64>;

    // ----- policy -----
    /// Stores a new policy version (the caller validated it).
    async fn put_policy(&self, text: &str, author: &str) -> StoreResult<PolicyRecord>;
    /// The latest policy, if any was ever stored.
    async fn current_policy(&self) -> StoreResult<Option<PolicyRecord>>;
    /// Policy versions, newest first, at most `limit`.
    async fn policy_history(&self, limit: u32) -> StoreResult<Vec<PolicyRecord>>;

    // ----- audit log -----
    /// Appends an entry stamped with the current time.
    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<AuditEntry>;
    /// Entries newest first, at most `limit`, only those with id < `before` if given.
    async fn list_audit(&self, limit: u32, before: Option<i64>) -> StoreResult<Vec<AuditEntry>>;

    // ----- tailnet lock -----
    /// The Tailnet Lock state row, `None` if the lock was never enabled.
    async fn tka_state(&self) -> StoreResult<Option<TkaState>>;
    /// Every stored AUM, in commit order.
    async fn tka_aums(&self) -> StoreResult<Vec<TkaAumRecord>>;
    /// Applies a Tailnet Lock change in one transaction: optionally wipes AUMs and node
    /// signatures, stores the new AUMs, sets node signatures, and writes the state row.
    /// `NotFound` if a signature names a missing node (nothing is changed then).
    async fn tka_commit(&self, commit: TkaCommit) -> StoreResult<()>;
    /// Sets (or clears) one node's Tailnet Lock key signature.
    async fn set_node_key_signature(
        &self,
        id: NodeId,
        signature: Option<Vec<u8>>,
    ) -> StoreResult<Node>;

    // ----- server state -----
    /// A value from the key-value table (Noise private key, DERP key, ...).
    async fn kv_get(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Inserts or replaces a value.
    async fn kv_put(&self, key: &str, value: &[u8]) -> StoreResult<()>;
    /// Removes a value; `Ok` even if absent.
    async fn kv_delete(&self, key: &str) -> StoreResult<()>;
}

impl dyn Store {
    /// Same as [`open`]: `<dyn Store>::open("sqlite:///var/lib/weft/weft.db")`.
    pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
        open(url).await
    }
}

/// Opens the store named by `url` and runs its migrations.
///
/// - `sqlite://PATH` (e.g. `sqlite:///var/lib/weft/weft.db` or `sqlite://./weft.db`;
///   query options after `?` are passed to sqlx); the file is created if missing.
/// - `postgres://...` or `postgresql://...`.
pub async fn open(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::open(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.chars().take(20).collect()))
    }
}

/// The SQLite URL for the database file in a state directory: `sqlite://DIR/weft.db`.
pub fn sqlite_url_for_dir(dir: &std::path::Path) -> String {
    format!("sqlite://{}", dir.join("weft.db").display())
}
