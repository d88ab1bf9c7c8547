# The p4kube reconciler image: the project's wheel, installed on a slim Python 3.11, run as a
# non-root user on a read-only root filesystem (deploy/base/deployment.yaml).
#
#   docker build -t REGISTRY/p4kube:TAG .
#   docker run --rm REGISTRY/p4kube:TAG                 # p4kube run --help
#
# The builder stage builds the same wheel as `pip wheel --no-deps .` in a checkout (schemas and
# P4 files inside the package), with build tools pinned by hash (requirements-build.lock); the
# final stage installs the dependencies exactly as requirements.lock pins them (versions and
# sha256 hashes: a changed or substituted file on the index fails the build), from binary wheels
# only, then the project's wheel without dependencies: no compiler, no build tools, no source tree. tests/test_install_manifest.py
# checks these properties statically (there is no Docker engine in CI).

# --- builder: the project's wheel -----------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder
# The build context has no .git: say the commit, and `p4kube --version` and p4kube_build_info
# name it (setup.py writes it into the wheel):
#   docker build --build-arg P4KUBE_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) -t REGISTRY/p4kube:TAG .
ARG P4KUBE_BUILD_COMMIT=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    P4KUBE_BUILD_COMMIT=${P4KUBE_BUILD_COMMIT}
WORKDIR /src
# .dockerignore lets in only what the wheel is built from: pyproject.toml, setup.py, README.md, reconciler/
# and intent-examples/ (reconciler/data/intent-examples/ links into it; symlinks are copied as
# such), and the lock files.
COPY . .
RUN pip install --require-hashes --only-binary=:all: -r requirements-build.lock \
 && pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && cp requirements.lock /wheels/ \
 && ls /wheels/p4kube_reconciler-*.whl

# --- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="p4kube reconciler" \
      org.opencontainers.image.description="GitOps reconciler for P4Kube: Git intent + cluster state -> audited, transactional P4Runtime switch tables" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=builder /wheels/ /tmp/wheels/
# Dependencies from the lock, hashes checked, binary wheels only (--only-binary): nothing is
# compiled here. Then the project's wheel alone (--no-deps: nothing unpinned comes in). Then the
# paths that must be writable at run time: the audit work directory (an emptyDir in the Deployment).
RUN pip install --require-hashes --only-binary=:all: -r /tmp/wheels/requirements.lock \
 && pip install --no-deps --only-binary=:all: /tmp/wheels/p4kube_reconciler-*.whl \
 && rm -rf /tmp/wheels \
 && mkdir -p /var/lib/p4kube \
 && chown 65532:65532 /var/lib/p4kube
# The root filesystem is read-only in the cluster: no bytecode written at run time, HOME (Git's
# configuration, SSH known_hosts) on /tmp, an emptyDir there.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 65532:65532
WORKDIR /var/lib/p4kube
EXPOSE 9100
ENTRYPOINT ["p4kube"]
CMD ["run", "--help"]
