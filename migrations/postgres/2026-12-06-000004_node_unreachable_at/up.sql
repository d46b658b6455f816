-- When a gateway last reported the node unreachable (NULL: not since one
-- last reached it). The node's own heartbeat does not bring it back up
-- while such a report is recent: a node that runs but that no gateway can
-- reach (a wrong registered port, a firewall) shows down, not up.
ALTER TABLE outline_nodes ADD COLUMN unreachable_at TIMESTAMP;
