-- Who may sync with this relay: people, their invites and devices, and the devices' actors.

-- Relay-wide settings (its peer id, its storage id).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Coalitions this relay manages, with the identity it writes membership edits as (JSON of
-- coalition_core::Identity: the coordinator's organisation and user, a device named after the
-- relay, and an actor of its own that no other device uses).
CREATE TABLE coalitions (
    id             TEXT PRIMARY KEY,
    relay_identity TEXT NOT NULL,
    created_at     INTEGER NOT NULL
);

CREATE TABLE people (
    id   INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    org  TEXT NOT NULL,
    UNIQUE (user, org)
);

-- An invite is known only by the SHA-256 of its code; it is used at most once.
CREATE TABLE invites (
    code_hash    TEXT PRIMARY KEY,
    coalition_id TEXT NOT NULL,
    person_id    INTEGER NOT NULL REFERENCES people (id),
    role         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    used_at      INTEGER,
    device_id    TEXT
);

-- A device's credential is known only by its SHA-256.
CREATE TABLE devices (
    id              TEXT PRIMARY KEY,
    person_id       INTEGER NOT NULL REFERENCES people (id),
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,
    credential_hash TEXT NOT NULL UNIQUE,
    enrolled_at     INTEGER NOT NULL,
    last_seen_at    INTEGER,
    revoked_at      INTEGER
);

CREATE TABLE device_coalitions (
    device_id    TEXT NOT NULL REFERENCES devices (id),
    coalition_id TEXT NOT NULL,
    PRIMARY KEY (device_id, coalition_id)
);

-- Automerge actors bound to devices (once bound, never rebound). `source` is `enrolled` for
-- the actor given at enrollment, `seen` for one first seen in changes on the device's
-- connection.
CREATE TABLE actors (
    actor     TEXT PRIMARY KEY,
    device_id TEXT NOT NULL REFERENCES devices (id),
    bound_at  INTEGER NOT NULL,
    source    TEXT NOT NULL
);
CREATE INDEX actors_by_device ON actors (device_id);
