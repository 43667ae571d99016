-- Documents of every coalition on this device, and their bytes.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE documents (
    doc_id       TEXT PRIMARY KEY,
    coalition_id TEXT NOT NULL,
    kind         TEXT NOT NULL,
    owner        TEXT,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX documents_by_coalition ON documents (coalition_id);

-- A document is its snapshot followed by the incremental changes saved since; loading
-- concatenates them in id order and hands them to Automerge in one call.
CREATE TABLE chunks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id   TEXT NOT NULL REFERENCES documents (doc_id),
    snapshot INTEGER NOT NULL,
    data     BLOB NOT NULL
);
CREATE INDEX chunks_by_doc ON chunks (doc_id, id);

-- automerge sync::State per document and peer storage id, so a reconnect sends only what the
-- other side lacks.
CREATE TABLE sync_states (
    doc_id TEXT NOT NULL,
    peer   TEXT NOT NULL,
    state  BLOB NOT NULL,
    PRIMARY KEY (doc_id, peer)
);
