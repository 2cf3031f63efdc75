-- Adopt table $1 (a name, resolved with the search_path) with mapping $2
-- (JSON text); returns the effective mapping and the table's name.
SELECT outbox.adopt($1::text::regclass, $2::text::jsonb)::text AS mapping,
       $1::text::regclass::text AS source
