# Stand-in for nats:2.10-alpine: Debian's nats-server (2.9); compose passes the flags.
FROM directpush-standin/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends nats-server \
 && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["nats-server"]
