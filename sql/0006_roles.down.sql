-- Keys that held roles lose those scopes: announce them first.
UPDATE api_keys SET version = version + 1 WHERE id IN (SELECT key_id FROM key_roles);
DROP FUNCTION IF EXISTS key_role_scopes(uuid);
DROP FUNCTION IF EXISTS key_role_names(uuid);
DROP TABLE IF EXISTS key_roles;
DROP TABLE IF EXISTS roles;
DROP FUNCTION IF EXISTS roles_bump_keys();
DROP FUNCTION IF EXISTS key_roles_bump_removed();
DROP FUNCTION IF EXISTS key_roles_bump_added();
