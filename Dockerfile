# The gateway image: one static-ish binary on a slim Debian, run as a
# numeric non-root user.
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e DATABASE_URL=postgres://... -e GATEWAY_KEYS_PEPPER=... gateway
# deploy/compose.yaml and deploy/k8s/ use it; scripts/check-deploy.sh lints
# this file with hadolint (no Docker engine runs in CI).
#
# Base images are pinned to a release tag (not `latest`) so a rebuild gets
# the same toolchain; pin digests too when your registry policy asks for it.

# ---- build stage: the Rust toolchain, cmake (Pingora's build) ----------------
FROM rust:1.95.0-bookworm AS build
# The Debian point release of the base image fixes the package versions;
# apt version pins would break the build at every Debian security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src

# Dependency-caching layer: build every dependency against a stub crate, so
# a change under src/ recompiles only the gateway itself. A stub rather than
# cargo-chef, because cargo-chef would have to be compiled (`cargo install`)
# in this stage first, from outside Cargo.lock; the stub needs nothing. The
# stubs mirror the targets Cargo.toml declares explicitly ([lib], [[bin]],
# [[bench]]): cargo refuses a manifest whose declared targets are missing.
COPY Cargo.toml Cargo.lock ./
# Every [[bench]] name in Cargo.toml gets a stub, so a new bench needs no
# edit here. pipefail: a failing sed must fail the build.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && sed -n '/^\[\[bench\]\]/,/^name/ s/^name = "\(.*\)"/\1/p' Cargo.toml \
       | while read -r b; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin gateway \
    && rm -rf src

# The real sources. sql/ (migrations) and admin/openapi.yaml are compiled
# into the binary with include_str!, so they are needed here and not in the
# runtime image.
COPY src ./src
COPY sql ./sql
COPY admin ./admin
# COPY keeps the files' own mtimes, which can be older than the stub's build:
# touch them so cargo rebuilds the crate instead of keeping the stub.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin gateway

# ---- runtime stage: the binary, CA certificates, nothing else ---------------
FROM debian:12.12-slim
# ca-certificates: webhooks and JWKS are fetched over https. No curl: the
# HEALTHCHECK is the binary itself. Versions as in the build stage.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY conf/gateway.toml /etc/gateway/gateway.toml
# Numeric, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 8080 9090
# The admin listener must bind beyond loopback inside a container (keep the
# port itself off the internet: deploy/k8s/networkpolicy.yaml).
ENV GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
# So every subcommand (`docker exec ... gateway keys create ...`) finds the
# config without -c; mount your own file here.
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml
# `gateway health` GETs /health/ready: 200 once the key snapshot has loaded
# (and still during a Postgres outage, when the proxy serves from the
# snapshot). The URL is given explicitly so the probe never parses the
# config (which resolves upstream host names); change it with the port.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["gateway", "health", "--url", "http://127.0.0.1:9090/health/ready", "--timeout", "3s"]
# Pingora: SIGTERM = graceful terminate (stop accepting, let in-flight
# requests finish for up to proxy.shutdown_grace_seconds, default 5, then
# exit); SIGINT = exit at once; SIGQUIT = graceful upgrade (hand the
# listening sockets to a new process), which a container never wants. So the
# stop signal is SIGTERM, and a runtime's stop timeout (docker stop -t,
# Kubernetes terminationGracePeriodSeconds) must exceed
# shutdown_grace_seconds + 1 s of Pingora's final shutdown timeout.
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
