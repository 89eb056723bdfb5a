# syntax=docker/dockerfile:1
# vllm-router image: the router binary on Debian slim, running as an unprivileged user.
#   docker build -t vllm-router .
#   docker run --rm -p 30000:30000 -p 29000:29000 vllm-router --worker-urls http://vllm:8000

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The registry and target directories are BuildKit caches kept between builds, so a source
# change recompiles the workspace, not every dependency. The target cache is not part of the
# image, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p vllm-router \
    && install -D -m 0755 target/release/vllm-router /out/vllm-router

FROM debian:bookworm-slim
# Debian's ca-certificates is not version-pinned: the pin would break with every security
# update of the suite; the bookworm tag already fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 vllm-router \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin vllm-router
COPY --from=builder /out/vllm-router /usr/local/bin/vllm-router

LABEL org.opencontainers.image.title="vllm-router" \
      org.opencontainers.image.description="A fast, KV-cache-aware load balancer for fleets of vLLM servers" \
      org.opencontainers.image.source="https://github.com/vllm-router/vllm-router" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
# In a container both listeners must face the container's network, not its loopback. The
# environment keeps it so when `docker run IMAGE <flags>` replaces CMD. Settings rank
# defaults < config file < environment < flags, so only a flag (--host, --prometheus-host)
# overrides these.
ENV VLLM_ROUTER_HOST=0.0.0.0 \
    VLLM_ROUTER_PROMETHEUS_HOST=0.0.0.0
# 30000: the OpenAI-compatible API, probes and admin routes; 29000: Prometheus /metrics.
EXPOSE 30000 29000
# SIGTERM drains in-flight requests for up to --shutdown-timeout-secs (30): stop with
# `docker stop -t 40`, or run with `--stop-timeout 40`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vllm-router"]
CMD ["--host", "0.0.0.0"]
