# Container image of the telemetry aggregator: both binaries (`aggregator`, the default
# entrypoint, and `publisher`) on a slim Debian, running as the non-root user `aggregator`.
#
#   docker build -t telemetry-aggregator .
#   docker run -e NATS_URL=... -e DATABASE_URL=... -p 8080:8080 telemetry-aggregator
#   docker run --entrypoint publisher telemetry-aggregator --count 1000 --nats-url ...
#
# docker-compose.yml builds and runs it with NATS, PostgreSQL, Prometheus and Grafana.
#   docker build --build-arg GIT_SHA=$(git rev-parse --short HEAD) -t telemetry-aggregator .

# --- build ----------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, against stub sources, so that a change to the project's own code does
# not rebuild the few hundred crates it depends on (this layer is cached until a manifest or
# Cargo.lock changes). Works with the classic builder and BuildKit alike. A new workspace
# member needs its Cargo.toml copied here too (the build fails loudly until it is).
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY publisher/Cargo.toml publisher/
COPY aggregator/Cargo.toml aggregator/
COPY tests/Cargo.toml tests/
RUN for crate in shared publisher aggregator tests; do \
      mkdir -p "$crate/src" && : > "$crate/src/lib.rs"; \
    done \
 && echo 'fn main() {}' > publisher/src/main.rs \
 && echo 'fn main() {}' > aggregator/src/main.rs \
 && cargo build --release --locked --bins \
 && rm -rf shared/src publisher/src aggregator/src tests/src

# The real sources (migrations are embedded into the aggregator at compile time). Touch them:
# COPY keeps the files' own mtimes, which may be older than the stub build's outputs.
# GIT_SHA labels aggregator_build_info (aggregator/build.rs): .git is not in the context.
ARG GIT_SHA=unknown
ENV GIT_SHA=${GIT_SHA}
COPY . .
RUN find shared publisher aggregator tests -path '*/src/*' -name '*.rs' -exec touch {} + \
 && cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/aggregator target/release/publisher /out/

# --- runtime --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# The binaries link only glibc (TLS to NATS and Postgres is rustls); ca-certificates are the
# system roots both trust (Postgres: besides a sslrootcert in DATABASE_URL),
# curl for the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*

# The WAL directory exists and belongs to `aggregator` before VOLUME is declared, so a fresh
# named volume mounted there inherits that ownership.
RUN groupadd --system aggregator \
 && useradd --system --gid aggregator --home-dir /var/lib/aggregator --shell /usr/sbin/nologin aggregator \
 && mkdir -p /var/lib/aggregator/wal \
 && chown -R aggregator:aggregator /var/lib/aggregator

COPY --from=builder /out/aggregator /out/publisher /usr/local/bin/

ENV HTTP_ADDR=0.0.0.0:8080 WAL_PATH=/var/lib/aggregator/wal
VOLUME /var/lib/aggregator/wal
WORKDIR /var/lib/aggregator
USER aggregator
EXPOSE 8080

# /ready: migrations applied, stream and consumer set up, not draining for shutdown.
# (Assumes the default port; change it here too if HTTP_ADDR moves.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/ready || exit 1

# SIGTERM drains gracefully (buffered batches to Postgres or the WAL, then ack); give it time:
# `docker stop -t 30`, or stop_grace_period in compose.
STOPSIGNAL SIGTERM
ENTRYPOINT ["aggregator"]
