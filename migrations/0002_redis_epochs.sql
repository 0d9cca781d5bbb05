-- Every incarnation of a namespace's Redis state that a frontend saw (`<ns>:epoch`). A second
-- one for a namespace means Redis lost its state at least once: from then on (for the device
-- state TTL), a device Redis does not know may have been known before, and hears its folders
-- again rather than be taken for new (I1).
CREATE TABLE redis_epochs (
    namespace text NOT NULL,
    epoch text NOT NULL,
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, epoch)
);
