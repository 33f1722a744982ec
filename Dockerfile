# syntax=docker/dockerfile:1.7
# The carehub image: one static-ish binary (glibc only; TLS is rustls) on distroless, non-root.
#   docker build -t registry.example.com/carehub/carehub:$(git describe --tags --always) .
# Every service runs from it: `carehub serve <service>`, `carehub migrate <service>`,
# `carehub health --service <service>` (the chart's args).

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Manifests first, so that dependency builds are cached until Cargo.toml/Cargo.lock change.
# protoc comes from the protoc-bin-vendored crate: no system packages needed.
COPY Cargo.toml Cargo.lock ./
COPY proto ./proto
COPY services ./services
# The end-to-end tests are a workspace member: cargo needs them to load the workspace (not built).
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin carehub \
 && install -D -m 0555 target/release/carehub /out/carehub

# distroless/cc: glibc, libgcc and CA certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/carehub /usr/local/bin/carehub
# The chart runs as 65532 too (podSecurity.runAsUser); numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 50051 9051
ENTRYPOINT ["/usr/local/bin/carehub"]
CMD ["--help"]
