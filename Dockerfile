# Image of the vehicle-connect operator.
#
# NOTE: this machine has no Docker engine, so this file has not been built here; it is kept
# minimal on purpose (two stages, nothing clever). Build and push it where Docker/BuildKit
# or another OCI builder runs:
#
#   docker build --build-arg GIT_SHA=$(git rev-parse HEAD) \
#     -t registry.example.com/platform/vehicle-connect:0.1.0 .
#   docker push registry.example.com/platform/vehicle-connect:0.1.0
#
# The binary links glibc and libgcc only (TLS is rustls; CA roots come from the image's
# /etc/ssl/certs), so distroless "cc" is enough. It runs as the distroless "nonroot" user
# (65532), which the Helm chart's securityContext expects.

FROM rust:1-bookworm AS build
WORKDIR /src
# The commit, read at compile time into the build_info metric (empty when not given).
ARG GIT_SHA=""
ENV VC_GIT_SHA=${GIT_SHA}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin vehicle-connect \
 && install -D -m 0755 target/release/vehicle-connect /out/vehicle-connect \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/vehicle-connect /usr/local/bin/vehicle-connect
# The store's default location, writable by the nonroot user even without a volume.
COPY --from=build --chown=65532:65532 /out/data /var/lib/vehicle-connect
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/vehicle-connect"]
CMD ["run"]
