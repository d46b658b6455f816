# Builds the httvps binaries. Used by docker-compose.yml.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/httvps /usr/local/bin/httvps
COPY --from=build /src/target/release/httvps-relay /usr/local/bin/httvps-relay
USER nobody
EXPOSE 8000
CMD ["httvps", "serve"]
