-- The audit log: one row per admin mutation and per denied admin call,
-- written in the same transaction as the change it records.
--
-- Append-only: a trigger rejects UPDATE and DELETE (TRUNCATE too).
-- Tamper-evident: `hash` is a keyed BLAKE3 hash (key derived from the server
-- pepper) over `prev_hash` and the entry's canonical form, so changing,
-- removing or reordering a row breaks the chain that `gateway audit verify`
-- walks. Appends are serialised by a transaction-level advisory lock, so the
-- chain order is the id order.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL,
    actor_type   text NOT NULL CHECK (actor_type IN ('key', 'cli', 'anonymous')),
    actor_key_id uuid,
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text NOT NULL,
    -- Before/after states with secrets removed (key objects never hold them).
    before       jsonb,
    after        jsonb,
    result       text NOT NULL CHECK (result IN ('success', 'denied')),
    client_ip    text,
    user_agent   text,
    request_id   text NOT NULL,
    prev_hash    bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash         bytea NOT NULL CHECK (length(hash) = 32)
);

CREATE INDEX audit_log_action ON audit_log (action, id DESC);
CREATE INDEX audit_log_actor ON audit_log (actor_key_id, id DESC);
CREATE INDEX audit_log_target ON audit_log (target_id, id DESC);
CREATE INDEX audit_log_occurred_at ON audit_log (occurred_at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_append_only
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
