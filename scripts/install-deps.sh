#!/usr/bin/env bash
# Installs what Shoal's tests, demo and benchmarks use on Debian: PostgreSQL 15 (server, client, pgbench),
# libpq headers, PgBouncer (for side-by-side comparisons), PHP's pgsql driver (the Moodle-pattern test), and
# Debian's psycopg 3, asyncpg and prometheus_client for the system python3 (console, prepared-statement and
# /metrics tests).
# Idempotent: packages already present are left alone.
set -euo pipefail
packages=(postgresql-15 postgresql-client-15 libpq-dev pgbouncer php-cli php-pgsql pkg-config python3 python3-psycopg python3-asyncpg python3-prometheus-client python3-yaml python3-pip openssl adduser iproute2 iptables)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Freshly installed, Debian starts a PostgreSQL cluster on 5432 and a pgbouncer service on 6432.
    # Tests and benchmarks run their own on other ports; stop what this install just started.
    if printf '%s\n' "${missing[@]}" | grep -qx postgresql-15; then
        pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
    fi
    if printf '%s\n' "${missing[@]}" | grep -qx pgbouncer; then
        (systemctl stop pgbouncer || service pgbouncer stop || /etc/init.d/pgbouncer stop) >/dev/null 2>&1 || true
    fi
fi
# The image test builds the runtime image with buildah (vfs storage, chroot isolation: no daemon, no registry).
if ! command -v buildah >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq buildah >/dev/null
fi
# The Kubernetes overlays are rendered with `kubectl kustomize` (Debian's own archive has no kubectl: the
# package comes from the Kubernetes or Google Cloud apt repository where one is configured).
if ! command -v kubectl >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq kubectl >/dev/null \
        || echo "install-deps: no kubectl package in the configured apt sources; the Kustomize test will fail" >&2
fi
# The Kubernetes manifests are checked against the API schema with kubernetes-validate (PyPI; Debian has none).
if ! /usr/bin/python3 -c "import kubernetes_validate" >/dev/null 2>&1; then
    /usr/bin/python3 -m pip install --quiet --break-system-packages kubernetes-validate >/dev/null 2>&1 \
        || /usr/bin/python3 -m pip install --quiet kubernetes-validate
fi
echo "dependencies ready: $(psql --version), $(pgbouncer --version | head -1), $(php --version | head -1)"
