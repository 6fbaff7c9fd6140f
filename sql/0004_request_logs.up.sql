-- Request logs (DESIGN §3 "Request logs and traffic statistics").
--
-- `request_logs`: one row per stored request record, written by the
-- request-log writer with binary COPY. Partitioned by day (UTC) so that
-- retention drops whole partitions instead of deleting rows; partitions are
-- made by `request_logs_ensure_partition`, ahead of time by the writer and
-- housekeeping, and on demand when a batch meets a day without one.
-- `id` is a UUIDv7: its first 48 bits are the record's Unix milliseconds,
-- so a lookup by id knows which partition to read.
CREATE TABLE request_logs (
    id                  uuid NOT NULL,
    ts                  timestamptz NOT NULL,
    request_id          text NOT NULL,
    key_id              uuid,
    route               text,
    method              text NOT NULL,
    path                text NOT NULL,
    query               text,
    status              smallint NOT NULL,
    error_code          text,
    latency_ms          double precision NOT NULL,
    upstream_latency_ms double precision,
    upstream            text,
    request_bytes       bigint NOT NULL,
    response_bytes      bigint NOT NULL,
    client_ip           inet,
    user_agent          text,
    -- Only on `log_bodies` routes: the first `max_body_bytes`, redacted.
    request_body        text,
    response_body       text,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts);

CREATE INDEX request_logs_ts ON request_logs (ts DESC, id DESC);
CREATE INDEX request_logs_key ON request_logs (key_id, ts DESC, id DESC);

-- Creates the partition holding `day` (UTC) if it is missing and returns
-- its name. Instances racing to create the same partition never fail: the
-- advisory lock serialises them, and since taking an advisory lock does not
-- refresh a session's catalog cache, a creation that still finds the table
-- already made by the other session counts as done.
CREATE FUNCTION request_logs_ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    part text := 'request_logs_' || to_char(day, 'YYYYMMDD');
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('request_logs_ensure_partition'));
    IF to_regclass(part) IS NULL THEN
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF request_logs FOR VALUES FROM (%L) TO (%L)',
                part,
                (day::timestamp AT TIME ZONE 'UTC'),
                ((day + 1)::timestamp AT TIME ZONE 'UTC'));
        EXCEPTION WHEN duplicate_table OR unique_violation THEN
            NULL;
        END;
    END IF;
    RETURN part;
END;
$$;

SELECT request_logs_ensure_partition((now() AT TIME ZONE 'UTC')::date + d)
FROM generate_series(-1, 2) AS d;

-- Per-minute rollups, upserted by every instance: rows of one minute from
-- several instances add up. `/requests/stats` and `/keys/{id}/usage` read
-- only these, so totals count every request whatever `sample_rate` left out
-- of `request_logs`, and outlive raw partitions (`rollup_retention_days`).
-- The key and route of requests that had none are stored as the nil UUID
-- and '' (a primary key cannot hold NULL); the API shows them as null.
-- `latency_buckets` is a histogram with log-spaced buckets (see
-- `reqlog::histogram`), merged by element-wise addition.
CREATE TABLE request_rollups (
    minute          timestamptz NOT NULL,
    route           text NOT NULL,
    key_id          uuid NOT NULL,
    method          text NOT NULL,
    status          smallint NOT NULL,
    error_code      text NOT NULL,
    count           bigint NOT NULL,
    client_errors   bigint NOT NULL,
    server_errors   bigint NOT NULL,
    request_bytes   bigint NOT NULL,
    response_bytes  bigint NOT NULL,
    latency_sum_ms  double precision NOT NULL,
    latency_buckets bigint[] NOT NULL,
    PRIMARY KEY (minute, route, key_id, method, status, error_code)
);

CREATE INDEX request_rollups_key ON request_rollups (key_id, minute);
CREATE INDEX request_rollups_route ON request_rollups (route, minute);

-- Element-wise sum of two histograms (the longer one's length wins).
CREATE FUNCTION histogram_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- The histograms of many rows merged into one.
CREATE AGGREGATE histogram_sum(bigint[]) (
    SFUNC = histogram_add,
    STYPE = bigint[],
    INITCOND = '{}'
);
