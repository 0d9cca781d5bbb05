# Stand-in for rust:1.95-bookworm: Debian 12 with a C toolchain and the Rust toolchain the
# build context carries (this machine's, copied by scripts/deploy-smoke.sh).
FROM directpush-standin/debian:bookworm
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
# This machine's CA bundle: the package registry's TLS may be signed by a local authority.
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && rustc --version && cargo --version
