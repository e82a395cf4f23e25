# syntax=docker/dockerfile:1
# The storepulse image: built in a full Rust image, shipped as a stripped binary on
# debian:bookworm-slim (the binary needs only libc, libm, libgcc_s and zlib, all in the
# base image). `docker compose build` uses it; so can `docker build -t storepulse .`.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY aggregate aggregate
COPY replay replay
COPY src src
COPY schemas schemas
COPY benches benches
RUN cargo build --release --locked --bin storepulse \
    && strip target/release/storepulse \
    && ls -l target/release/storepulse

FROM debian:bookworm-slim
COPY --from=build /src/target/release/storepulse /usr/local/bin/storepulse
COPY data/sample.csv /app/data/sample.csv
# The snapshots volume takes this directory's owner when compose creates it.
RUN mkdir -p /snapshots && chown 65532:65532 /snapshots
USER 65532:65532
WORKDIR /app
ENV STOREPULSE_SNAPSHOT_DIR=/snapshots \
    STOREPULSE_NO_PROGRESS=1
ENTRYPOINT ["storepulse"]
CMD ["--help"]
