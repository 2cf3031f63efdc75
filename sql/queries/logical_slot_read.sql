-- Consume everything decoded from slot $1 for publication $2 and count the
-- inserts ('I' messages of the pgoutput protocol, byte 73). Begin/commit
-- messages of unrelated transactions do not count.
SELECT count(*) FILTER (WHERE get_byte(data, 0) = 73)
FROM pg_logical_slot_get_binary_changes($1, NULL, NULL,
                                        'proto_version', '1',
                                        'publication_names', $2)
