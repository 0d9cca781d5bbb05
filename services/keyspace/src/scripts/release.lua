-- release: run by the frontend once a Ping has ended without a Status 2 (one that reported
-- folders releases in its ack or reported script, the same round trip).
-- KEYS: 1 owners; ARGV: 1 device key, 2 the ended Ping's owner prefix "pod\trequest\t"
return release_owner(KEYS[1], ARGV[1], ARGV[2])
