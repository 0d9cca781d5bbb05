# Stand-in for postgres:16-alpine: Debian's PostgreSQL 15, with an entrypoint that sets up a
# cluster from POSTGRES_USER, POSTGRES_PASSWORD and POSTGRES_DB as the official image does.
FROM directpush-standin/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
EXPOSE 5432
