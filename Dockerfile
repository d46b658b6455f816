# The httvps binaries (control plane and data plane) in one image; used by
# docker-compose.yml. Build: docker build -t httvps .
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, from the manifests and the lock file alone, so this
# layer is reused until they change (stub targets stand in for the sources:
# a library per package and the two binaries the manifest names).
COPY Cargo.toml Cargo.lock ./
COPY crates/wire/Cargo.toml crates/wire/
COPY crates/control/Cargo.toml crates/control/
COPY crates/dataplane/Cargo.toml crates/dataplane/
COPY crates/netlab/Cargo.toml crates/netlab/
RUN for d in . crates/wire crates/control crates/dataplane crates/netlab; do \
      mkdir -p "$d/src" && touch "$d/src/lib.rs"; \
    done \
    && mkdir -p src/bin \
    && echo 'fn main() {}' > src/bin/httvps.rs \
    && echo 'fn main() {}' > src/bin/httvps-relay.rs \
    && cargo fetch --locked
# Then the sources (.dockerignore keeps target/, .env and data/ out).
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/httvps /etc/httvps /enroll \
    && chown nobody:nogroup /var/lib/httvps /etc/httvps /enroll
COPY --from=build /src/target/release/httvps /usr/local/bin/httvps
COPY --from=build /src/target/release/httvps-relay /usr/local/bin/httvps-relay
# Inside a container, listen on every interface (publish ports to choose
# what the host exposes); state and certificates live in /var/lib/httvps.
ENV BACKEND_HOST=0.0.0.0 \
    HTTVPS_DATA_DIR=/var/lib/httvps \
    GATEWAY_TLS_CERT=/var/lib/httvps/gateway.crt \
    GATEWAY_TLS_KEY=/var/lib/httvps/gateway.key \
    GATEWAY_SPOOL=/var/lib/httvps/gateway-spool.json \
    GATEWAY_CREDENTIALS=/var/lib/httvps/gateway-credentials.json \
    NODE_CREDENTIALS=/var/lib/httvps/node-credentials.json
USER nobody
WORKDIR /var/lib/httvps
EXPOSE 8000
CMD ["httvps", "serve"]
