-- Stop adopting table $1: drops the trigger and function outbox.adopt
-- installed; false when it was not adopted.
SELECT outbox.unadopt($1::text::regclass) AS adopted,
       $1::text::regclass::text AS source
