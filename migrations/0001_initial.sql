-- Accounts that may Ping, the devices seen, and one history row per finished Ping.

CREATE TABLE accounts (
    name          text PRIMARY KEY,          -- the canonical (lower-case) mailbox name
    password_hash text NOT NULL,             -- argon2id, PHC string
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE devices (
    mailbox          text NOT NULL,
    device_id        text NOT NULL,
    device_type      text NOT NULL,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    protocol_version text,
    user_agent       text,
    -- The longest heartbeat that ran to its end with the device still there: what its network
    -- path is known to carry.
    heartbeat_limit  integer,
    PRIMARY KEY (mailbox, device_id)
);

CREATE TABLE ping_history (
    ended_at            timestamptz NOT NULL,
    started_at          timestamptz NOT NULL,
    mailbox             text NOT NULL,
    device_id           text NOT NULL,
    pod                 text NOT NULL,
    request_id          bigint NOT NULL,
    requested_heartbeat integer,
    effective_heartbeat integer,
    -- expired, changed, superseded, client_gone, drained, rejected, error
    outcome             text NOT NULL,
    status              smallint,
    changed_folders     text[] NOT NULL DEFAULT '{}'
) PARTITION BY RANGE (ended_at);

CREATE INDEX ping_history_device ON ping_history (mailbox, device_id, ended_at DESC);

-- Rows whose day has no partition yet land here rather than failing.
CREATE TABLE ping_history_default PARTITION OF ping_history DEFAULT;

-- Creates the daily partitions from today to today + days_ahead.
CREATE FUNCTION dp_ensure_history_partitions(days_ahead integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    day date;
BEGIN
    FOR i IN 0..days_ahead LOOP
        day := current_date + i;
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF ping_history FOR VALUES FROM (%L) TO (%L)',
            'ping_history_' || to_char(day, 'YYYYMMDD'), day, day + 1);
    END LOOP;
END $$;

-- Drops the daily partitions that end before today - keep_days; returns how many.
CREATE FUNCTION dp_drop_history_partitions(keep_days integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'ping_history' AND c.relname ~ '^ping_history_[0-9]{8}$'
          AND to_date(substring(c.relname from 14), 'YYYYMMDD') < current_date - keep_days
    LOOP
        EXECUTE format('DROP TABLE %I', part.relname);
        dropped := dropped + 1;
    END LOOP;
    RETURN dropped;
END $$;
