# syntax=docker/dockerfile:1
# One image, one binary: `proxypilot serve` (the sidecar, the default command) or
# `proxypilot tokenizer`. docs/image.md explains the stages, the non-root user on port 443, the
# health check and what `make image-test` checks.
#
#   docker build -t proxypilot .                                   # target `runtime`: compiles
#   docker build -t proxypilot --target runtime-prebuilt .         # takes target/release/proxypilot
#   podman build --format docker ...                               # podman: keep the HEALTHCHECK
#
# Both targets are `runtime-base` (user, working directory, config, health check, entrypoint)
# plus the binary; they differ only in the stage the binary comes from. BuildKit and buildah
# build only the stages a target needs, so `runtime-prebuilt` never builds nor pulls the Rust
# stage: scripts/image-test.sh builds it on machines that cannot pull rust:1-bookworm, with its
# binary at target/image/proxypilot (--build-arg PROXYPILOT_BIN=target/image/proxypilot).
# (Not an ARG naming the binary's stage: buildah skips a stage named only by an ARG's default.)

# ---- build: the release binary, with dependencies in a layer of their own
FROM rust:1-bookworm AS build
# pingora needs cmake (zlib-ng); perl, make and a C compiler (vendored OpenSSL) are in the image.
# bolt-19: llvm-bolt, which lays out the linked binary by pgo/'s BOLT profile (scripts/bolt.sh).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      cmake bolt-19 >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# pingora-core and pingora-proxy with our patches ([patch.crates-io]; vendor/README.md).
COPY vendor ./vendor
# The profiles the release build is optimized with (pgo/README.md), the script that unpacks
# the first and prints the flags (nothing when this image's rustc could not read it), and the
# one that lays out the linked binary by the second.
COPY pgo ./pgo
COPY scripts/pgo-flags.sh scripts/bolt.sh ./scripts/
# Dependencies only, against a placeholder crate (the crate has both a lib and a bin, so both
# src/lib.rs and src/main.rs): this layer stays cached until Cargo.toml, Cargo.lock, vendor/ or
# pgo/ change, so a source change does not compile OpenSSL, pingora and the rest again. The
# placeholder's own artifacts and fingerprints are removed so the real sources below always
# rebuild (COPY keeps the files' old mtimes, which could look older than the placeholder's build).
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && RUSTFLAGS="$(scripts/pgo-flags.sh)" cargo build --release --locked \
 && rm -rf src target/release/proxypilot* target/release/.fingerprint/proxypilot-* \
           target/release/deps/proxypilot-* target/release/deps/libproxypilot-*
COPY src ./src
RUN RUSTFLAGS="$(scripts/pgo-flags.sh)" cargo build --release --locked \
 && scripts/bolt.sh target/release/proxypilot \
 && strip target/release/proxypilot \
 && install -D -m 0755 target/release/proxypilot /out/proxypilot

# ---- prebuilt: a binary built elsewhere, taken from the build context (a glibc build for
# bookworm or older; `strip` it first to get the size the build stage gives)
FROM scratch AS prebuilt
ARG PROXYPILOT_BIN=target/release/proxypilot
COPY ${PROXYPILOT_BIN} /out/proxypilot

# ---- runtime-base: everything but the binary
FROM debian:bookworm-slim AS runtime-base
# ca-certificates: the roots for an https:// tokenizer (and the tokenizer's upstream APIs).
# libcap2-bin: setcap in the stages below (and getcap to inspect the image); only root can use it.
# The user has fixed numeric ids, so Kubernetes' runAsNonRoot can check it.
# /var/lib/proxypilot is the working directory, where drop-in mode keeps ca.pem / ca-key.pem:
# owned by that user, mode 0700 (mount a volume there to keep the CA across restarts).
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      ca-certificates libcap2-bin >/dev/null \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 proxypilot \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/proxypilot --no-create-home \
            --shell /usr/sbin/nologin proxypilot \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/proxypilot
# The production example only (conf/local.yaml is for `make run`); it keeps its CA in ./certs,
# i.e. /var/lib/proxypilot/certs: `proxypilot serve -c /etc/proxypilot/proxy.yaml`.
COPY conf/proxy.yaml /etc/proxypilot/proxy.yaml
WORKDIR /var/lib/proxypilot
# The slim image has no curl: `proxypilot health` does GET https://localhost:$PORT/healthz
# (PORT from the environment, else 443; give --port when a -c config listens elsewhere).
# podman keeps HEALTHCHECK only in Docker-format images (podman build --format docker).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/proxypilot", "health", "--timeout", "3s"]
# Drop-in for tlsproxy: TARGETS, PROXY and PORT from the environment; CA kept in this directory.
ENTRYPOINT ["/usr/local/bin/proxypilot"]
CMD ["serve"]

# The binary goes in last (a source change rebuilds only that layer), with the file capability
# to bind ports below 1024 (443) as the non-root user. setcap runs in the stage that ships the
# file because builders disagree on whether COPY --from keeps a file capability (buildah and
# BuildKit do, the legacy builder and kaniko do not; COPY from the build context never does).
# A bind mount instead of COPY + RUN setcap keeps the binary in one layer (setcap on a COPYed
# file would store it twice). The build fails if the capability did not stick. USER comes after,
# since setcap needs root. The two targets below differ only in `from=`: keep them in step.
# Running it: with all capabilities dropped, add NET_BIND_SERVICE back, or the kernel refuses to
# exec a file with this capability; under no_new_privs the capability is ignored and
# net.ipv4.ip_unprivileged_port_start=0 must do it (docs/image.md, "Non-root on port 443").

# ---- runtime-prebuilt: with the binary from the build context (`prebuilt`)
FROM runtime-base AS runtime-prebuilt
RUN --mount=type=bind,from=prebuilt,source=/out/proxypilot,target=/tmp/proxypilot \
    install -m 0755 /tmp/proxypilot /usr/local/bin/proxypilot \
 && setcap cap_net_bind_service=+ep /usr/local/bin/proxypilot \
 && getcap /usr/local/bin/proxypilot | grep -q cap_net_bind_service
USER 10001:10001

# ---- runtime (the default target): with the binary compiled in `build`
FROM runtime-base AS runtime
RUN --mount=type=bind,from=build,source=/out/proxypilot,target=/tmp/proxypilot \
    install -m 0755 /tmp/proxypilot /usr/local/bin/proxypilot \
 && setcap cap_net_bind_service=+ep /usr/local/bin/proxypilot \
 && getcap /usr/local/bin/proxypilot | grep -q cap_net_bind_service
USER 10001:10001
