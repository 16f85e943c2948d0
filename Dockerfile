# syntax=docker/dockerfile:1
# Magic Runtime image: `magic` built with cargo, run on Debian slim with Python 3.
#
#   docker build -t magic-runtime .
#   docker run --rm -p 8080:8080 -e CONTROLLER_EXECUTION_MODE=inline magic-runtime   # dev only
#
# Production (process mode, the isolating one) needs privileges the default container lacks;
# deploy/docker-compose.prod.yml grants exactly these and docs/deploy.md explains each:
#   user 0:0 (the runtime maps sandboxed children to host uids 100000+ and 165534),
#   cap_drop ALL + cap_add SYS_ADMIN SETUID SETGID SETPCAP KILL CHOWN FOWNER DAC_OVERRIDE,
#   security_opt seccomp=unconfined (the runtime installs its own, stricter, allowlist on every
#   controller process) and apparmor=unconfined (mount/pivot_root of the sandbox root),
#   cgroup: host with /sys/fs/cgroup mounted read-write (per-execution memory/cpu/pids slots).
# `magic doctor` inside the container prints which isolation layer is missing, if any.

ARG RUST_VERSION=1.85
ARG DEBIAN=bookworm

# ---- builder ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      pkg-config libseccomp-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Cache mounts keep the cargo registry and the target dir between builds.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p magic-cli \
 && install -D -m 0755 target/release/magic /out/magic

# ---- runtime ---------------------------------------------------------------------------
FROM debian:${DEBIAN}-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 libseccomp2 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 magic \
 && useradd --system --uid 10001 --gid magic --home-dir /var/lib/magic --shell /usr/sbin/nologin magic \
 && install -d -o magic -g magic -m 0750 /var/lib/magic
COPY --from=builder /out/magic /usr/local/bin/magic

# Everything the runtime writes is under the data dir (a volume); /tmp may be a tmpfs. The
# root filesystem can be read-only (`read_only: true` / `docker run --read-only`).
ENV MAGIC_DATA_DIR=/var/lib/magic \
    MAGIC_LISTEN=0.0.0.0:8080 \
    RUST_LOG=info
VOLUME ["/var/lib/magic"]
WORKDIR /var/lib/magic
EXPOSE 8080

# Non-root by default (inline/dev mode, CLI use). Process mode in production runs as root in
# the container with the capabilities above: see deploy/docker-compose.prod.yml.
USER magic

# Liveness: /api/health answers without credentials. python3 is in the image anyway.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python3", "-c", "import os,sys,urllib.request; port=os.environ.get('MAGIC_LISTEN','0.0.0.0:8080').rsplit(':',1)[1]; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:'+port+'/api/health', timeout=2).status == 200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/magic"]
CMD ["serve"]
