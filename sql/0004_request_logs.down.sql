DROP AGGREGATE IF EXISTS histogram_sum(bigint[]);
DROP FUNCTION IF EXISTS histogram_add(bigint[], bigint[]);
DROP TABLE IF EXISTS request_rollups;
DROP FUNCTION IF EXISTS request_logs_ensure_partition(date);
DROP TABLE IF EXISTS request_logs;
