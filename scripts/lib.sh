# Shared helpers of the operations scripts (sourced, not run).
# shellcheck shell=bash

MAGIC_BIN="${MAGIC_BIN:-magic}"

die() {
    echo "error: $*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 is required but not on PATH${2:+ ($2)}"
}

is_postgres_url() {
    case "${1:-}" in
        postgres://* | postgresql://*) return 0 ;;
        *) return 1 ;;
    esac
}

# The URL without its query string (psql/pg_dump do not know sqlx's options[...] parameters).
pg_plain_url() {
    printf '%s\n' "${1%%\?*}"
}

# The database name of a postgres:// URL.
pg_database() {
    local plain
    plain="$(pg_plain_url "$1")"
    printf '%s\n' "${plain##*/}"
}

# The same server, the `postgres` maintenance database.
pg_admin_url() {
    local plain
    plain="$(pg_plain_url "$1")"
    printf '%s/postgres\n' "${plain%/*}"
}

# A database name is one SQL identifier we create/drop: keep it to safe characters.
check_identifier() {
    [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]{0,62}$ ]] || die "$2 ${1@Q} is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"
}

sha256_of() {
    sha256sum "$1" | cut -d' ' -f1
}

# A usage error: exit 2 (as the magic CLI does).
usage_error() {
    echo "error: $*" >&2
    exit 2
}
