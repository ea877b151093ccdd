# syntax=docker/dockerfile:1
# breakwater's images. No Docker engine runs in CI: tests/tests/kubernetes.rs parses
# this file and checks the builder's Rust version against Cargo.toml, the build
# command against the README's, and the uid against the chart's.
#
#   docker build -t breakwater:0.1.0 .                        # the sidecar (default target)
#     (add --build-arg BREAKWATER_COMMIT=$(git rev-parse --short=12 HEAD) for build info)
#   docker build --target init -t breakwater:0.1.0-init .     # the iptables init step

# The builder: the Rust release Cargo.toml's rust-version names, on Debian 12.
FROM rust:1.95-slim-bookworm AS builder
# The commit breakwater_build_info reports: the context has no .git, so pass it,
# e.g. --build-arg BREAKWATER_COMMIT=$(git rev-parse --short=12 HEAD).
ARG BREAKWATER_COMMIT=unknown
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked \
    && cp target/release/breakwater /breakwater

# The init step of transparent mode: the same binary with iptables, run as root with
# NET_ADMIN and NET_RAW by the chart's breakwater-init container, then gone.
FROM debian:12-slim AS init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /breakwater /usr/local/bin/breakwater
USER 0:0
ENTRYPOINT ["breakwater"]
CMD ["init-iptables", "--dry-run"]

# The sidecar: glibc and libgcc only (distroless cc, Debian 12 like the builder), no
# shell. uid 1717 is what `init-iptables --proxy-uid` exempts from redirection and
# what the chart's runAsUser sets. Nothing is written to disk, so a read-only root
# filesystem works.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /breakwater /usr/local/bin/breakwater
USER 1717:1717
EXPOSE 15000 15001 15006
ENTRYPOINT ["breakwater"]
CMD ["run"]
