-- weft coordination server schema (SQLite). Timestamps are Unix nanoseconds (INTEGER);
-- JSON values are TEXT; keys are their text form (mkey:..., nodekey:...).

CREATE TABLE users (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT    NOT NULL UNIQUE,
    display_name     TEXT    NOT NULL DEFAULT '',
    email            TEXT    NOT NULL DEFAULT '',
    profile_pic_url  TEXT    NOT NULL DEFAULT '',
    provider         TEXT    NOT NULL DEFAULT '',
    provider_subject TEXT    UNIQUE,
    groups_json      TEXT    NOT NULL DEFAULT '[]',
    created_at       INTEGER NOT NULL
);

CREATE TABLE preauth_keys (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    key_prefix   TEXT    NOT NULL UNIQUE,
    key_hash     BLOB    NOT NULL,
    reusable     INTEGER NOT NULL DEFAULT 0,
    ephemeral    INTEGER NOT NULL DEFAULT 0,
    pre_approved INTEGER NOT NULL DEFAULT 0,
    tags_json    TEXT    NOT NULL DEFAULT '[]',
    used         INTEGER NOT NULL DEFAULT 0,
    use_count    INTEGER NOT NULL DEFAULT 0,
    expiration   INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX preauth_keys_user ON preauth_keys(user_id);

CREATE TABLE nodes (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_key         TEXT    NOT NULL UNIQUE,
    node_key            TEXT    NOT NULL UNIQUE,
    disco_key           TEXT    NOT NULL DEFAULT '',
    nl_key              TEXT    NOT NULL DEFAULT '',
    user_id             INTEGER NOT NULL REFERENCES users(id) ON DELETE RESTRICT,
    hostname            TEXT    NOT NULL DEFAULT '',
    given_name          TEXT    NOT NULL UNIQUE,
    ipv4                TEXT    NOT NULL UNIQUE,
    ipv6                TEXT    NOT NULL UNIQUE,
    hostinfo_json       TEXT    NOT NULL DEFAULT '{}',
    endpoints_json      TEXT    NOT NULL DEFAULT '[]',
    tags_json           TEXT    NOT NULL DEFAULT '[]',
    approved_routes_json TEXT   NOT NULL DEFAULT '[]',
    auth_key_id         INTEGER REFERENCES preauth_keys(id) ON DELETE SET NULL,
    ephemeral           INTEGER NOT NULL DEFAULT 0,
    approved            INTEGER NOT NULL DEFAULT 1,
    expiry              INTEGER,
    key_expiry_disabled INTEGER NOT NULL DEFAULT 0,
    last_seen           INTEGER,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX nodes_user ON nodes(user_id);
CREATE INDEX nodes_auth_key ON nodes(auth_key_id);

CREATE TABLE registration_sessions (
    auth_id           TEXT    PRIMARY KEY,
    machine_key       TEXT    NOT NULL,
    node_key          TEXT    NOT NULL,
    old_node_key      TEXT    NOT NULL DEFAULT '',
    hostinfo_json     TEXT    NOT NULL DEFAULT '{}',
    ephemeral         INTEGER NOT NULL DEFAULT 0,
    requested_expiry  INTEGER,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    completed_user_id INTEGER REFERENCES users(id) ON DELETE SET NULL,
    completed_node_id INTEGER REFERENCES nodes(id) ON DELETE SET NULL
);
CREATE INDEX registration_sessions_expires ON registration_sessions(expires_at);

CREATE TABLE policies (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    text       TEXT    NOT NULL,
    author     TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL DEFAULT '',
    detail_json TEXT    NOT NULL DEFAULT 'null'
);

CREATE TABLE server_state (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
