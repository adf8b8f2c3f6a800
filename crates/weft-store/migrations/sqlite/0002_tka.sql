-- Tailnet Lock (TKA): per-tailnet state, the AUM log (never compacted) and node signatures.
ALTER TABLE nodes ADD COLUMN key_signature BLOB;

CREATE TABLE tka_state (
    id                   INTEGER PRIMARY KEY CHECK (id = 1),
    mode                 TEXT    NOT NULL CHECK (mode IN ('enabled', 'disabled')),
    genesis_hash         BLOB    NOT NULL,
    head                 BLOB    NOT NULL,
    disablement_secret   BLOB,
    support_disablement  BLOB,
    updated_at           INTEGER NOT NULL
);

CREATE TABLE tka_aums (
    hash        BLOB    PRIMARY KEY,
    parent      BLOB,
    data        BLOB    NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE INDEX tka_aums_parent ON tka_aums (parent);
