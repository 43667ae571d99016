-- Changes kept aside after a check refused them, with who made them and why. On a relay this
-- is the quarantine a coordinator reviews; on a device, the changes the relay refused (taken
-- out of the local documents, never deleted). `change` is the raw Automerge change, so an
-- accepted one can be applied as it was made.
CREATE TABLE held_changes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id       TEXT NOT NULL,
    coalition_id TEXT NOT NULL,
    hash         TEXT NOT NULL,
    change       BLOB NOT NULL,
    actor        TEXT NOT NULL,
    author       TEXT,
    sent_by      TEXT,
    summary      TEXT,
    reason       TEXT NOT NULL,
    held_at      INTEGER NOT NULL,
    status       TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'accepted', 'discarded')),
    decided_by   TEXT,
    decided_at   INTEGER,
    UNIQUE (doc_id, hash)
);
CREATE INDEX held_changes_by_coalition ON held_changes (coalition_id, status);
