-- A session opened through a gateway names the device's open session
-- through that gateway it was opened beside (the newest; its node no longer
-- takes new tunnels), or none. At most one session is open per device,
-- gateway and predecessor: two assignments that raced, each seeing no open
-- session, open one session between them, not one each on two nodes.
-- (Sessions with no gateway, a device's own asks, stay unconstrained, as
-- before: NULLs are distinct.)
ALTER TABLE sessions ADD COLUMN supersedes TEXT;
-- Open sessions that raced before: each names the one before it.
UPDATE sessions SET supersedes = earlier.prev
    FROM (SELECT id, LAG(id) OVER (PARTITION BY device_id, gateway_node_id ORDER BY id) AS prev
          FROM sessions WHERE ended_at IS NULL AND gateway_node_id IS NOT NULL) AS earlier
    WHERE sessions.id = earlier.id AND earlier.prev IS NOT NULL;
DROP INDEX sessions_one_open;
CREATE UNIQUE INDEX sessions_one_open ON sessions (device_id, gateway_node_id, COALESCE(supersedes, '')) WHERE ended_at IS NULL;
