# syntax=docker/dockerfile:1
# One image, both binaries: ward-proxy (sidecar `run` and init `init`) and
# ward-control-plane. Not built in this repository's CI (no Docker engine on
# the build machines): see docs/kubernetes.md.
#
# Builder: Debian-based Rust matching the workspace's toolchain. aws-lc-rs
# needs cmake, clang and a C toolchain.
FROM rust:1.88-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake clang \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ward-proxy -p ward-control-plane \
    && mkdir -p /out \
    && cp target/release/ward-proxy target/release/ward-control-plane /out/

# Runtime: distroless glibc image, no shell, no package manager. The init
# container (ward-proxy init) drives iptables: it needs the iptables and
# iproute tools, which distroless lacks, so the init step uses the
# `-iptables` variant below.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /out/ward-proxy /out/ward-control-plane /usr/local/bin/
USER 1337:1337
EXPOSE 15001 15006 15012 15014 15017 15020
ENTRYPOINT []
CMD ["ward-proxy", "run"]

# The published image: runtime plus iptables (nft and legacy backends) for
# `ward-proxy init`. Still no shell in PATH for the sidecar's use; iptables
# pulls in only its own libraries.
FROM debian:bookworm-slim AS ward
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1337 ward \
    && useradd --uid 1337 --gid 1337 --no-create-home --shell /usr/sbin/nologin ward
COPY --from=builder /out/ward-proxy /out/ward-control-plane /usr/local/bin/
USER 1337:1337
EXPOSE 15001 15006 15012 15014 15017 15020
CMD ["ward-proxy", "run"]
