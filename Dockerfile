# syntax=docker/dockerfile:1
# The container image of `sluice`: docker build -t sluice .
# (docs/deploy.md). Kubernetes manifests that run it: deploy/kubernetes/.

# Build. The toolchain is the one rust-toolchain.toml pins (1.95.0, with
# the wasm32-wasip2 target the built-in components are compiled for).
FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY rust-toolchain.toml ./
RUN rustup target add wasm32-wasip2
COPY . .
# The components (components/artifacts' build script, a nested cargo for
# wasm32-wasip2) and the host, with the versions Cargo.lock fixes. The
# caches only speed up rebuilds; the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice \
 && cp target/release/sluice /usr/local/bin/sluice

# Run.
FROM debian:bookworm-slim
# Roots for database TLS (sslmode=verify-full, sslrootcert=system); the
# newest of the release, so not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 sluice \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/sluice --no-create-home \
      --shell /usr/sbin/nologin sluice \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/sluice
COPY --from=build /usr/local/bin/sluice /usr/local/bin/sluice
USER 10001:10001
# data_dir: the compile cache and the spool (docs/deploy.md). The default
# data_dir, .sluice, is relative to it; Kubernetes mounts a volume here.
WORKDIR /var/lib/sluice
# Reachable from outside the container (the default is 127.0.0.1:8080).
ENV SLUICE_LISTEN=0.0.0.0:8080
EXPOSE 8080
# Needs SLUICE_DATABASE_URL: the image has no PostgreSQL of its own.
ENTRYPOINT ["sluice"]
CMD ["serve"]
