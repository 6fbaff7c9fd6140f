-- A row version for api_keys, raised by every change the proxy reads (the
-- same changes that touch updated_at and are announced by NOTIFY). The admin
-- API answers a write once its own instance's snapshot holds the version the
-- write produced; a timestamp could not tell two changes in one millisecond,
-- or ones whose transactions started out of order, apart. Raised under the
-- row lock, so versions of a row only ever grow.
ALTER TABLE api_keys ADD COLUMN version bigint NOT NULL DEFAULT 1;

CREATE OR REPLACE FUNCTION api_keys_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(OLD) - 'last_used_at') <> (to_jsonb(NEW) - 'last_used_at') THEN
        NEW.updated_at := now();
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END;
$$;
