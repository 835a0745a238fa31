# The operator image: the `dvo` binary on a distroless base, non-root, nothing else.
#   docker build -t ghcr.io/caat/dvo-operator:0.1.0 .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a change to our code does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in decide audit audit_store; do echo 'fn main() {}' > benches/$b.rs; done \
    && cargo build --release --locked --bin dvo && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin dvo \
    && strip target/release/dvo

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/dvo /usr/local/bin/dvo
USER 65532:65532
EXPOSE 8081 9443
ENTRYPOINT ["/usr/local/bin/dvo"]
CMD ["run"]
