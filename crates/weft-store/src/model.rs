//! The rows the store hands out, and the inputs it takes.
//!
//! Timestamps are `time::OffsetDateTime` (UTC) in the API. Both databases keep
//! them as `BIGINT` Unix nanoseconds, so ordering and equality are exact and the
//! SQL is the same for both backends. A round trip through the store preserves
//! the value to the nanosecond (and loses only the UTC offset).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use weft_key::{DiscoPublic, MachinePublic, NlPublic, NodePublic};

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

id_type!(
    /// A user's database id (`tailcfg.UserID`); positive, never reused.
    UserId
);
id_type!(
    /// A node's database id (`tailcfg.NodeID`); positive, never reused.
    NodeId
);
id_type!(
    /// A pre-auth key's database id.
    PreauthKeyId
);

/// A user (a login identity that owns nodes and pre-auth keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Database id.
    pub id: UserId,
    /// Unique login name (e.g. `alice` or `alice@example.com`).
    pub name: String,
    /// Human-readable name; may be empty.
    pub display_name: String,
    /// E-mail address; may be empty.
    pub email: String,
    /// Profile picture URL; may be empty.
    pub profile_pic_url: String,
    /// `""` for locally created users, `"oidc"` for users created by an OIDC login.
    pub provider: String,
    /// The identity provider's subject (`iss` + `sub`, as the caller chooses); unique when set.
    pub provider_subject: Option<String>,
    /// Groups claimed by the identity provider.
    pub groups: Vec<String>,
    /// When the user was created.
    pub created_at: OffsetDateTime,
}

/// Input for [`crate::Store::create_user`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewUser {
    /// Unique login name.
    pub name: String,
    /// Human-readable name.
    pub display_name: String,
    /// E-mail address.
    pub email: String,
    /// Profile picture URL.
    pub profile_pic_url: String,
    /// `""` or `"oidc"`.
    pub provider: String,
    /// Identity provider subject; `None` for local users.
    pub provider_subject: Option<String>,
    /// Groups from the identity provider.
    pub groups: Vec<String>,
}

/// Profile fields refreshed on every OIDC login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserProfileUpdate {
    /// Human-readable name.
    pub display_name: String,
    /// E-mail address.
    pub email: String,
    /// Profile picture URL.
    pub profile_pic_url: String,
    /// Groups from the identity provider.
    pub groups: Vec<String>,
}

/// A pre-auth key as stored: the secret itself is never stored, only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreauthKey {
    /// Database id.
    pub id: PreauthKeyId,
    /// Owner.
    pub user_id: UserId,
    /// Public lookup prefix (the `<prefix>` of `tskey-auth-<prefix>-<secret>`); safe to list.
    pub prefix: String,
    /// Can register more than one node.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Nodes registered with it skip device approval.
    pub pre_approved: bool,
    /// Tags given to nodes registered with it.
    pub tags: Vec<String>,
    /// Whether it has been used at least once.
    pub used: bool,
    /// How many registrations consumed it.
    pub use_count: i64,
    /// Not valid at or after this instant; `None` = never expires.
    pub expiration: Option<OffsetDateTime>,
    /// When it was created.
    pub created_at: OffsetDateTime,
}

impl PreauthKey {
    /// Whether it is expired at `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expiration.is_some_and(|e| e <= now)
    }

    /// Whether a registration at `now` may consume it (not expired; unused or reusable).
    pub fn is_usable(&self, now: OffsetDateTime) -> bool {
        !self.is_expired(now) && (self.reusable || !self.used)
    }
}

/// Input for [`crate::Store::create_preauth_key`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewPreauthKey {
    /// Owner.
    pub user_id: UserId,
    /// Can register more than one node.
    pub reusable: bool,
    /// Nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Nodes registered with it skip device approval.
    pub pre_approved: bool,
    /// Tags for nodes registered with it.
    pub tags: Vec<String>,
    /// Expiry; `None` = never.
    pub expiration: Option<OffsetDateTime>,
}

/// A node (one machine's registration in the tailnet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Database id; stable across node-key rotation.
    pub id: NodeId,
    /// Noise machine key; unique.
    pub machine_key: MachinePublic,
    /// Current WireGuard node key; unique.
    pub node_key: NodePublic,
    /// Current disco key (zero until the first map request).
    pub disco_key: DiscoPublic,
    /// Tailnet-lock public key (zero when unknown).
    pub nl_key: NlPublic,
    /// Owner.
    pub user_id: UserId,
    /// The hostname the node reports (from Hostinfo).
    pub hostname: String,
    /// The node's MagicDNS label; unique in the tailnet.
    pub given_name: String,
    /// Tailnet IPv4 address; unique.
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6 address; unique.
    pub ipv6: Ipv6Addr,
    /// The last Hostinfo the node sent, as opaque JSON (`{}` if none).
    pub hostinfo: serde_json::Value,
    /// The node's reported UDP endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// ACL tags (`tag:...`); a tagged node is owned by its tags, not its user.
    pub tags: Vec<String>,
    /// Subnet/exit routes an admin (or auto-approver) approved.
    pub approved_routes: Vec<IpNet>,
    /// The pre-auth key that registered it, if any (cleared when the key is deleted).
    pub auth_key_id: Option<PreauthKeyId>,
    /// Deleted when it goes offline for long enough.
    pub ephemeral: bool,
    /// Device approval (`MachineAuthorized`).
    pub approved: bool,
    /// Node key expiry; `None` = never expires.
    pub expiry: Option<OffsetDateTime>,
    /// An admin disabled key expiry for this node.
    pub key_expiry_disabled: bool,
    /// Last time the node was seen connected (independent of current online state).
    pub last_seen: Option<OffsetDateTime>,
    /// When the node was first registered.
    pub created_at: OffsetDateTime,
    /// When any stored field last changed.
    pub updated_at: OffsetDateTime,
    /// Tailnet Lock: the CBOR node-key signature of the current node key, if signed.
    #[serde(default)]
    pub key_signature: Option<Vec<u8>>,
}

impl Node {
    /// Whether the node key is expired at `now` (never, if expiry is disabled or unset).
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        !self.key_expiry_disabled && self.expiry.is_some_and(|e| e <= now)
    }
}

/// Input for [`crate::Store::create_node`]. Addresses are chosen by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNode {
    /// Noise machine key; must be unused.
    pub machine_key: MachinePublic,
    /// Node key; must be unused.
    pub node_key: NodePublic,
    /// Disco key (zero if unknown yet).
    pub disco_key: DiscoPublic,
    /// Tailnet-lock key (zero if unknown).
    pub nl_key: NlPublic,
    /// Owner; must exist.
    pub user_id: UserId,
    /// Reported hostname.
    pub hostname: String,
    /// Desired MagicDNS label; the store appends `-1`, `-2`, ... if it is taken.
    pub given_name_base: String,
    /// Hostinfo JSON.
    pub hostinfo: serde_json::Value,
    /// Endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Tags.
    pub tags: Vec<String>,
    /// Approved routes.
    pub approved_routes: Vec<IpNet>,
    /// A pre-auth key to consume in the same transaction. It must be usable at `now`
    /// (not expired, and unused unless reusable); it is then marked used.
    pub auth_key_id: Option<PreauthKeyId>,
    /// Ephemeral node.
    pub ephemeral: bool,
    /// Device approval.
    pub approved: bool,
    /// Key expiry; `None` = never.
    pub expiry: Option<OffsetDateTime>,
}

impl NewNode {
    /// A node with the given keys and owner and everything else empty/zero.
    pub fn new(
        machine_key: MachinePublic,
        node_key: NodePublic,
        user_id: UserId,
        hostname: &str,
    ) -> Self {
        Self {
            machine_key,
            node_key,
            disco_key: DiscoPublic::default(),
            nl_key: NlPublic::default(),
            user_id,
            hostname: hostname.to_owned(),
            given_name_base: crate::names::dns_label(hostname),
            hostinfo: serde_json::Value::Object(Default::default()),
            endpoints: Vec::new(),
            tags: Vec::new(),
            approved_routes: Vec::new(),
            auth_key_id: None,
            ephemeral: false,
            approved: true,
            expiry: None,
        }
    }
}

/// Input for [`crate::Store::reregister_node`]: a known machine registers again
/// (pre-auth key or completed interactive login); the node keeps its id and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReregistration {
    /// The node key now in use (may equal the current one).
    pub node_key: NodePublic,
    /// Owner after the registration.
    pub user_id: UserId,
    /// New Hostinfo (also updates `hostname`); `None` keeps the stored one.
    pub hostinfo: Option<serde_json::Value>,
    /// New key expiry (`None` = never).
    pub expiry: Option<OffsetDateTime>,
    /// A pre-auth key to consume in the same transaction (must be usable at `now`);
    /// recorded as the node's `auth_key_id`. `None` keeps the stored reference.
    pub auth_key_id: Option<PreauthKeyId>,
    /// New tags; `None` keeps the stored ones.
    pub tags: Option<Vec<String>>,
    /// Ephemeral flag.
    pub ephemeral: bool,
    /// New approval state; `None` keeps the stored one.
    pub approved: Option<bool>,
}

/// What a map request updates (each `Some` field replaces the stored value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeLiveUpdate {
    /// New disco key.
    pub disco_key: Option<DiscoPublic>,
    /// New endpoints.
    pub endpoints: Option<Vec<SocketAddr>>,
    /// New Hostinfo; also updates `hostname` from its `Hostname` field when present.
    pub hostinfo: Option<serde_json::Value>,
    /// Last-seen time.
    pub last_seen: Option<OffsetDateTime>,
}

/// A pending interactive registration (the `AuthURL` flow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationSession {
    /// Random id that appears in the AuthURL.
    pub auth_id: String,
    /// Machine key of the registering connection.
    pub machine_key: MachinePublic,
    /// Node key being registered.
    pub node_key: NodePublic,
    /// Previous node key when rotating (zero otherwise).
    pub old_node_key: NodePublic,
    /// Hostinfo from the register request.
    pub hostinfo: serde_json::Value,
    /// The request asked for an ephemeral node.
    pub ephemeral: bool,
    /// Expiry the client requested, if any.
    pub requested_expiry: Option<OffsetDateTime>,
    /// When the session started.
    pub created_at: OffsetDateTime,
    /// The session is void at or after this instant.
    pub expires_at: OffsetDateTime,
    /// Set when a user (admin command or OIDC) completed it.
    pub completed_user_id: Option<UserId>,
    /// The node created or updated by completion.
    pub completed_node_id: Option<NodeId>,
}

/// Input for [`crate::Store::create_session`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRegistrationSession {
    /// Random id (see [`crate::names::random_auth_id`]).
    pub auth_id: String,
    /// Machine key.
    pub machine_key: MachinePublic,
    /// Node key.
    pub node_key: NodePublic,
    /// Previous node key (zero if none).
    pub old_node_key: NodePublic,
    /// Hostinfo JSON.
    pub hostinfo: serde_json::Value,
    /// Ephemeral request.
    pub ephemeral: bool,
    /// Requested expiry.
    pub requested_expiry: Option<OffsetDateTime>,
    /// Void at or after this instant.
    pub expires_at: OffsetDateTime,
}

/// One version of the tailnet policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    /// Increasing version id.
    pub id: i64,
    /// The HuJSON text exactly as submitted.
    pub text: String,
    /// Who submitted it.
    pub author: String,
    /// When.
    pub created_at: OffsetDateTime,
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When it happened.
    pub at: OffsetDateTime,
    /// Who did it (user name, `system`, ...).
    pub actor: String,
    /// What (e.g. `node.delete`).
    pub action: String,
    /// On what (e.g. `node:12`).
    pub target: String,
    /// Extra structured detail.
    pub detail: serde_json::Value,
}

/// Input for [`crate::Store::append_audit`]; the store stamps `at` and `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Extra detail.
    pub detail: serde_json::Value,
}

/// Whether Tailnet Lock is on for the tailnet (no row at all = never enabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TkaMode {
    /// Enabled: nodes must carry valid key signatures.
    Enabled,
    /// Disabled with a disablement secret (kept in [`TkaState::disablement_secret`]).
    Disabled,
}

impl TkaMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TkaMode::Enabled => "enabled",
            TkaMode::Disabled => "disabled",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(TkaMode::Enabled),
            "disabled" => Some(TkaMode::Disabled),
            _ => None,
        }
    }
}

/// The tailnet's Tailnet Lock (TKA) state row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TkaState {
    /// Enabled or disabled.
    pub mode: TkaMode,
    /// Hash of the genesis AUM (32 bytes); also the last-active-ancestor hint, since the
    /// server never compacts.
    pub genesis_hash: Vec<u8>,
    /// Hash of the active chain's head AUM (32 bytes).
    pub head: Vec<u8>,
    /// The secret that disabled the lock (once used it is public).
    pub disablement_secret: Option<Vec<u8>>,
    /// The support disablement secret sent in init/finish, if any.
    pub support_disablement: Option<Vec<u8>>,
    /// When the row last changed.
    pub updated_at: OffsetDateTime,
}

/// One stored AUM (canonical CBOR, keyed by its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TkaAumRecord {
    /// BLAKE2s hash of `data` (32 bytes).
    pub hash: Vec<u8>,
    /// Parent hash; `None` for a genesis.
    pub parent: Option<Vec<u8>>,
    /// Canonical CBOR encoding.
    pub data: Vec<u8>,
}

/// One atomic Tailnet Lock change: see [`crate::Store::tka_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TkaCommit {
    /// The new state row.
    pub state: TkaState,
    /// Delete every stored AUM and every node's key signature first (a new genesis).
    pub reset: bool,
    /// AUMs to add (already stored hashes are ignored), oldest first.
    pub aums: Vec<TkaAumRecord>,
    /// Node key signatures to set (`None` clears).
    pub signatures: Vec<(NodeId, Option<Vec<u8>>)>,
}
