# Multi-stage build of the gateway binary.
#   docker build -t gateway .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -e DATABASE_URL=postgres://... -e GATEWAY_KEYS_PEPPER=... \
#     -v $PWD/conf/gateway.toml:/etc/gateway/gateway.toml:ro gateway
FROM rust:1-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY sql ./sql
COPY admin ./admin
RUN cargo build --release --locked --bin gateway

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 gateway
COPY --from=build /src/target/release/gateway /usr/local/bin/gateway
COPY conf/gateway.toml /etc/gateway/gateway.toml
USER gateway
EXPOSE 8080 9090
# The admin listener must bind beyond loopback inside a container.
ENV GATEWAY_ADMIN_LISTEN=0.0.0.0:9090
ENTRYPOINT ["gateway"]
CMD ["serve", "-c", "/etc/gateway/gateway.toml"]
