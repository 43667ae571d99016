-- How a device's actors are bound. A device that keeps one actor (the `coalition` client, the
-- mobile library) registers it at enrollment, and changes by any other unbound actor arriving
-- on its connections are refused. A stock automerge-repo client makes a new actor per
-- document; for such a device (`binds_seen_actors = 1`) an unbound actor first seen on its
-- connection is bound to it, and never rebound.
ALTER TABLE devices ADD COLUMN binds_seen_actors INTEGER NOT NULL DEFAULT 0;
