-- Webhooks (DESIGN §3 "Webhooks"): endpoints, a transactional outbox of
-- events, one delivery per (event, endpoint) and every attempt made.

CREATE TABLE webhooks (
    id                   uuid PRIMARY KEY,
    url                  text NOT NULL,
    description          text NOT NULL DEFAULT '',
    -- Event names, `api_key.*` or `*`.
    events               text[] NOT NULL,
    enabled              boolean NOT NULL DEFAULT true,
    disabled_reason      text CHECK (disabled_reason IN ('consecutive_failures', 'gone', 'manual')),
    -- The signing secret (`whsec_…`), encrypted at rest with an AEAD under a
    -- key derived from the server pepper: nonce || ciphertext || tag.
    secret               bytea NOT NULL,
    -- During a rotation's grace: the old secret, signed with as well until
    -- `previous_secret_expires_at`.
    previous_secret      bytea,
    previous_secret_expires_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    succeeded            bigint NOT NULL DEFAULT 0,
    failed               bigint NOT NULL DEFAULT 0,
    last_success_at      timestamptz,
    last_failure_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- The outbox: written in the same transaction as the change it announces.
-- Fanned out to the endpoints subscribed at dispatch time (`dispatched_at`
-- set then), so an endpoint created later never receives older events.
CREATE TABLE webhook_events (
    -- `msg_…`: the `webhook-id` header, the same on every attempt.
    id            text PRIMARY KEY,
    type          text NOT NULL,
    -- The exact body sent: {"type","timestamp","data"}.
    payload       jsonb NOT NULL,
    -- Set for events that must be emitted once (`api_key.expiring:<key>:<expires_at>`).
    dedupe_key    text UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    dispatched_at timestamptz
);

CREATE INDEX webhook_events_undispatched ON webhook_events (created_at)
    WHERE dispatched_at IS NULL;

CREATE TABLE webhook_deliveries (
    id              uuid PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        text NOT NULL REFERENCES webhook_events (id),
    event_type      text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    -- A claim: the instance making the attempt holds it until then; after,
    -- another instance may take the delivery over.
    lease_until     timestamptz,
    last_attempt_at timestamptz,
    response_status smallint,
    response_body   text,
    error           text CHECK (error IN ('timeout', 'connect', 'unsafe_target', 'redirect', 'http_status')),
    duration_ms     double precision,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, webhook_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id     uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL,
    response_status smallint,
    error           text,
    duration_ms     double precision NOT NULL
);

CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Housekeeping finds keys entering the expiring-notice window, expired
-- keys, and keys expired long enough to purge, by ranges of expires_at.
CREATE INDEX api_keys_expires_at ON api_keys (expires_at) WHERE expires_at IS NOT NULL;
