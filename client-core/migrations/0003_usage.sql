-- What a relay stores from each person (`user (org)`): documents created and bytes of
-- changes accepted, checked against the relay's quotas.
CREATE TABLE usage (
    person    TEXT PRIMARY KEY,
    documents INTEGER NOT NULL DEFAULT 0,
    bytes     INTEGER NOT NULL DEFAULT 0
);
