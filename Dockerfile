# syntax=docker/dockerfile:1
# Build: docker build -t microgateway-cni:0.1.0 .   (the tests build it with buildah: tests/support/images.py)
# The builder runs the same script the tests run (scripts/build-binaries.sh); the final image is FROM scratch
# and carries only the three one-dir bundles (each with its own loader, glibc and licenses/ notices) and the
# links to them, and runs the installer as its entrypoint.

FROM debian:12-slim AS builder
ENV DEBIAN_FRONTEND=noninteractive
# The base image tag fixes the Debian release; pinning point versions would break on every security update.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv libpython3.11 python3-dev gcc libc6-dev binutils \
      libiptc-dev libxtables-dev iptables ca-certificates musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The final stage has no shell: its symlinks are made here and copied as a tree.
RUN mkdir -p /links/usr/local/bin /links/usr/share/doc \
 && ln -s /usr/local/lib/microgateway-cni-installer/microgateway-cni-installer \
          /links/usr/local/bin/microgateway-cni-installer \
 && ln -s /usr/local/lib/microgateway-network-validator/microgateway-network-validator \
          /links/usr/local/bin/microgateway-network-validator \
 && ln -s /usr/local/lib/microgateway-cni/licenses /links/usr/share/doc/microgateway-cni
COPY pyproject.toml README.md ./
COPY cni/ cni/
COPY validator/ validator/
COPY daemonset/ daemonset/
COPY scripts/ scripts/
RUN MGW_SKIP_SETUP=1 bash scripts/build-binaries.sh

FROM scratch
COPY --from=builder /src/dist/bin/microgateway-cni/ /usr/local/lib/microgateway-cni/
COPY --from=builder /src/dist/bin/microgateway-network-validator/ /usr/local/lib/microgateway-network-validator/
COPY --from=builder /src/dist/bin/microgateway-cni-installer/ /usr/local/lib/microgateway-cni-installer/
COPY --from=builder /links/ /
# After the files, so that images of other versions share every layer.
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="microgateway-cni" \
      org.opencontainers.image.description="Chained CNI plugin, network validator and node installer for the Airlock Microgateway" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/microgateway-cni"
ENV MGW_PLUGIN_BINARY=/usr/local/lib/microgateway-cni/microgateway-cni
# The validator (same image, other command) runs as non-root; the installer needs root only to write the host's CNI dirs
# (the DaemonSet sets runAsUser: 0 and drops every capability it does not need).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/microgateway-cni-installer"]
CMD ["run"]
