# One image, one binary: `proxypilot serve` (sidecar) or `proxypilot tokenizer`.
FROM rust:1-bookworm AS build
RUN apt-get update -qq && apt-get install -y -qq cmake >/dev/null && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/proxypilot

FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq ca-certificates >/dev/null && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/proxypilot /usr/local/bin/proxypilot
COPY conf /etc/proxypilot
WORKDIR /var/lib/proxypilot
# Drop-in for tlsproxy: TARGETS, PROXY and PORT from the environment; CA kept in this directory.
ENTRYPOINT ["/usr/local/bin/proxypilot"]
CMD ["serve"]
