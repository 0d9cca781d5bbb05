# Stand-in for haproxy:2.9-alpine: Debian's HAProxy (2.6), reading the same configuration path.
FROM directpush-standin/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
USER haproxy
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
