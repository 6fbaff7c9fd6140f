-- API keys. Only a keyed BLAKE3 hash of each secret is stored; the plaintext
-- is shown once, at creation or rotation.
CREATE TABLE api_keys (
    id                      uuid PRIMARY KEY,
    name                    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description             text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    -- First 12 characters of the current secret, to recognise it in lists.
    prefix                  text NOT NULL,
    key_hash                bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    scopes                  text[] NOT NULL DEFAULT '{}',
    -- Per-key overrides of [rate_limits] default; NULL means "use the default".
    rate_limit_per_minute   integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_hour     integer CHECK (rate_limit_per_hour > 0),
    rate_limit_per_day      integer CHECK (rate_limit_per_day > 0),
    metadata                jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    expires_at              timestamptz,
    revoked_at              timestamptz,
    last_used_at            timestamptz,
    -- Rotation: the secret replaced by the last rotation keeps working until
    -- previous_key_expires_at (the grace period), then answers expired_api_key.
    rotated_at              timestamptz,
    previous_key_hash       bytea UNIQUE CHECK (length(previous_key_hash) = 32),
    previous_prefix         text,
    previous_key_expires_at timestamptz,
    CHECK ((previous_key_hash IS NULL) = (previous_key_expires_at IS NULL))
);

-- Stable cursor order for listing: newest first, id as tie-breaker.
CREATE INDEX api_keys_created_at_id ON api_keys (created_at DESC, id DESC);

-- Every change that matters to the proxy is announced on channel
-- api_keys_changed with the key id as payload. A trigger rather than
-- application code, so the NOTIFY is in the same transaction as the write
-- whoever makes it (admin API, CLI, or an operator in psql). Updates that
-- only move last_used_at are not announced: the proxy does not read it and
-- the batched flush would otherwise wake every instance.
CREATE FUNCTION api_keys_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (to_jsonb(OLD) - 'last_used_at') = (to_jsonb(NEW) - 'last_used_at') THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('api_keys_changed',
                      CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_notify
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_notify();

CREATE FUNCTION api_keys_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (to_jsonb(OLD) - 'last_used_at') <> (to_jsonb(NEW) - 'last_used_at') THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER api_keys_touch_updated_at
    BEFORE UPDATE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION api_keys_touch_updated_at();
