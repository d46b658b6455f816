DROP TABLE node_witness;
DROP TABLE witness_links;
