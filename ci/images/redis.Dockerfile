# Stand-in for redis:7.2-alpine: Debian's redis-server (7.0) and redis-cli.
FROM directpush-standin/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends redis-server redis-tools \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
CMD ["redis-server"]
