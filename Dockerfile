# directpush: one image with every binary (ping-frontend, mailbox-watcher, dpctl, loadtest).
#
#   docker build -t directpush .
#   docker run --rm directpush ping-frontend --help
#
# Needs BuildKit (Docker 20.10 or later; DOCKER_BUILDKIT=1 with a client older than 23) for the
# cache mounts. No `# syntax=` line: the builder's own Dockerfile frontend has every feature used
# here, and naming one makes every build fetch it from a registry first.
#
# Reproducible: the toolchain and base images are pinned, dependencies come from Cargo.lock
# (--locked), paths are remapped, and file times are set from SOURCE_DATE_EPOCH.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
ARG SOURCE_DATE_EPOCH=0
ENV CARGO_INCREMENTAL=0 \
    CARGO_TERM_COLOR=never \
    RUSTFLAGS="--remap-path-prefix=/src=/directpush --remap-path-prefix=/usr/local/cargo=/cargo"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p ping-frontend -p mailbox-watcher -p dpctl -p loadtest \
 && mkdir -p /out \
 && for bin in ping-frontend mailbox-watcher dpctl loadtest; do \
        cp "target/release/$bin" /out/ && touch -d "@${SOURCE_DATE_EPOCH}" "/out/$bin"; \
    done

# distroless/cc: glibc and libgcc only, no shell, runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENV LOG_FORMAT=json
# Frontend: devices on 8080, admin on 9090. The watcher listens on 8081 / 9091 (set HEALTH_URL).
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/dpctl", "health"]
CMD ["ping-frontend"]
