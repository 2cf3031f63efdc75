# syntax=docker/dockerfile:1
#
# outboxd: a release build on Debian 12, run on distroless/cc (glibc,
# libgcc, CA certificates and tzdata; no shell, no package manager) as the
# unprivileged user 65532.
#
#   docker build -t outboxd .
#   docker run --rm -e DATABASE_URL=postgres://user:pass@db/app -p 9090:9090 outboxd
#   docker run --rm -e DATABASE_URL=... outboxd migrate      # any other subcommand
#
# The sample webhook receiver of deploy/docker-compose.yml comes from the
# same file: docker build --target receiver -t outboxd-example-receiver .

# Base images are pinned: the build image by its exact tag, the runtime by
# digest (distroless publishes no version tags). Update both on purpose:
#   docker buildx imagetools inspect gcr.io/distroless/cc-debian12:nonroot
# prints the current digest; change both FROM lines and the base.digest
# labels with it.
ARG RUST_VERSION=1.95.0

# --- build: the same Debian release as the runtime, so the glibc matches;
# debug info stripped (symbols kept for backtraces): about 12 MB ---
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --bin outboxd \
 && cp target/release/outboxd /usr/local/bin/outboxd

# --- the sample receiver (examples/receiver.rs), for deploy/docker-compose.yml ---
FROM build AS receiver-build
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked --example receiver \
 && cp target/release/examples/receiver /usr/local/bin/outboxd-example-receiver

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f AS receiver
LABEL org.opencontainers.image.title="outboxd-example-receiver" \
      org.opencontainers.image.description="The sample webhook receiver of outboxd's deploy/docker-compose.yml (examples/receiver.rs)" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot" \
      org.opencontainers.image.base.digest="sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f"
COPY --from=receiver-build /usr/local/bin/outboxd-example-receiver /usr/local/bin/outboxd-example-receiver
ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/outboxd-example-receiver"]

# --- the outboxd image (the default target) ---
FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
# OCI annotations; the version is Cargo.toml's (a test keeps them equal).
LABEL org.opencontainers.image.title="outboxd" \
      org.opencontainers.image.description="Transactional-outbox webhook sidecar for PostgreSQL: INSERT a row, get a signed Standard Webhook, read the outcome with SQL." \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot" \
      org.opencontainers.image.base.digest="sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f"
COPY --from=build /usr/local/bin/outboxd /usr/local/bin/outboxd
# Probes and scrapes come from outside the container: listen on every
# interface (the binary's default is 127.0.0.1:9090).
ENV OUTBOXD_ADMIN_ADDR=0.0.0.0:9090
EXPOSE 9090
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# No shell or curl here: the binary asks its own /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/outboxd", "healthcheck"]
# `docker run IMAGE` runs the sidecar; `docker run IMAGE migrate` (or any
# other subcommand) replaces the default argument.
ENTRYPOINT ["/usr/local/bin/outboxd"]
CMD ["run"]
