DROP TABLE IF EXISTS api_keys;
DROP FUNCTION IF EXISTS api_keys_notify();
DROP FUNCTION IF EXISTS api_keys_touch_updated_at();
