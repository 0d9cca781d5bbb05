# Stand-in for gcr.io/distroless/cc-debian12:nonroot: glibc and libgcc (and, unlike distroless,
# a shell), running as uid 65532.
FROM directpush-standin/debian:bookworm
RUN echo 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group && mkdir -p /home/nonroot && chown 65532:65532 /home/nonroot
USER 65532:65532
WORKDIR /home/nonroot
