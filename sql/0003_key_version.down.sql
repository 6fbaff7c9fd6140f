CREATE OR REPLACE FUNCTION api_keys_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(OLD) - 'last_used_at') <> (to_jsonb(NEW) - 'last_used_at') THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

ALTER TABLE api_keys DROP COLUMN version;
