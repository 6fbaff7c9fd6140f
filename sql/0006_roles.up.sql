-- Roles (DESIGN §3 "JWT and roles"): a named set of scopes that keys hold
-- by reference. A key's effective scopes are its own plus those of its
-- roles, resolved when the key snapshot reads the key, so the proxy's hot
-- path does no extra work.
CREATE TABLE roles (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    scopes      text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Which keys hold which roles. A join table rather than an array of names
-- on api_keys: the foreign keys make a dangling role impossible, deleting
-- a role removes it from every key (ON DELETE CASCADE), a renamed role
-- stays attached, and key_roles_role finds the keys a role change touches.
CREATE TABLE key_roles (
    key_id  uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    role_id uuid NOT NULL REFERENCES roles (id) ON DELETE CASCADE,
    PRIMARY KEY (key_id, role_id)
);

CREATE INDEX key_roles_role ON key_roles (role_id);

-- Propagation: a key's effective scopes change when it gains or loses a
-- role, or when a role it holds changes its scopes. Each raises the
-- `version` of the keys concerned, so the api_keys triggers announce them
-- on api_keys_changed like any other key change: in the same transaction,
-- whoever makes it (admin API, CLI, or an operator in psql), and every
-- instance re-reads exactly those keys. Statement-level with transition
-- tables, so a role held by many keys costs one set-based UPDATE, not one
-- per key. (Transition tables allow one event per trigger, hence two.)
CREATE FUNCTION key_roles_bump_added() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_keys SET version = version + 1
    WHERE id IN (SELECT key_id FROM added);
    RETURN NULL;
END;
$$;

CREATE TRIGGER key_roles_bump_added
    AFTER INSERT ON key_roles
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION key_roles_bump_added();

CREATE FUNCTION key_roles_bump_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- A key being deleted (its rows cascade here) is already gone and is
    -- simply not found.
    UPDATE api_keys SET version = version + 1
    WHERE id IN (SELECT key_id FROM removed);
    RETURN NULL;
END;
$$;

CREATE TRIGGER key_roles_bump_removed
    AFTER DELETE ON key_roles
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION key_roles_bump_removed();

CREATE FUNCTION roles_bump_keys() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE api_keys SET version = version + 1
    WHERE id IN (SELECT key_id FROM key_roles WHERE role_id = NEW.id);
    RETURN NULL;
END;
$$;

-- Renaming a role or changing its description changes no key's access.
CREATE TRIGGER roles_bump_keys
    AFTER UPDATE OF scopes ON roles
    FOR EACH ROW WHEN (OLD.scopes IS DISTINCT FROM NEW.scopes)
    EXECUTE FUNCTION roles_bump_keys();

-- The names of a key's roles, sorted: what key responses show as `roles`.
CREATE FUNCTION key_role_names(key uuid) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(r.name ORDER BY r.name), '{}')
    FROM key_roles kr JOIN roles r ON r.id = kr.role_id
    WHERE kr.key_id = key
$$;

-- The scopes a key holds through its roles, sorted, without duplicates.
CREATE FUNCTION key_role_scopes(key uuid) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(DISTINCT s ORDER BY s), '{}')
    FROM key_roles kr JOIN roles r ON r.id = kr.role_id
    CROSS JOIN LATERAL unnest(r.scopes) AS s
    WHERE kr.key_id = key
$$;
