-- Tailnet Lock (TKA): per-tailnet state, the AUM log (never compacted) and node signatures.
ALTER TABLE nodes ADD COLUMN key_signature BYTEA;

CREATE TABLE tka_state (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    mode                 TEXT    NOT NULL CHECK (mode IN ('enabled', 'disabled')),
    genesis_hash         BYTEA   NOT NULL,
    head                 BYTEA   NOT NULL,
    disablement_secret   BYTEA,
    support_disablement  BYTEA,
    updated_at           BIGINT  NOT NULL
);

CREATE TABLE tka_aums (
    hash        BYTEA   PRIMARY KEY,
    parent      BYTEA,
    data        BYTEA   NOT NULL,
    seq         BIGINT  NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX tka_aums_parent ON tka_aums (parent);
