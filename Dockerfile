# Reflex's image: built with cargo in the official Rust image, run as a non-root user on a
# slim Debian with only what the operator calls — git and ssh for the GitOps backend, CA
# certificates for TLS. (A distroless image has no git.)
#   docker build -t reflex:dev .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY crds crds
COPY playbooks playbooks
COPY policies policies
COPY scenarios scenarios
COPY config config
COPY mcp-manifest.json ./
RUN cargo build --release --locked --bin reflex && strip target/release/reflex

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 reflex && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin reflex
COPY --from=build /src/target/release/reflex /usr/local/bin/reflex
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/reflex"]
CMD ["run"]
