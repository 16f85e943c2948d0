#!/usr/bin/env bash
# Prepare the runtime's database: create the PostgreSQL database (and optionally a login role
# for the runtime) when missing, then apply every migration `magic serve` applies at start
# (`magic migrate`). Safe to run again: nothing that exists is changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/init_db.sh [--database-url URL] [--data-dir DIR] [--role NAME --password-file FILE]

Creates the database named in DATABASE_URL when it does not exist (connecting to the server's
"postgres" database as the URL's user, who needs CREATEDB), optionally creates the runtime's
login role (NOLOGIN -> LOGIN, CREATEROLE so it can create the per-controller roles; never
SUPERUSER) and makes it the database's owner, then runs \`magic migrate\`.
Without a PostgreSQL URL the SQLite store in the data dir is migrated.

  --database-url URL   runtime store (default: \$DATABASE_URL; unset = SQLite in the data dir)
  --data-dir DIR       data dir (default: \$MAGIC_DATA_DIR or ./.magic)
  --role NAME          create this login role for the runtime (PostgreSQL only)
  --password-file FILE its password (first line)
  -h, --help           this help

Environment: MAGIC_BIN (default: magic on PATH).
USAGE
}

url="${DATABASE_URL:-}"
data_dir="${MAGIC_DATA_DIR:-./.magic}"
role=""
password_file=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --database-url) url="${2:?--database-url needs a value}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        --role) role="${2:?--role needs a value}"; shift 2 ;;
        --password-file) password_file="${2:?--password-file needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; usage_error "unknown argument ${1@Q}" ;;
    esac
done

if is_postgres_url "$url"; then
    need psql "the PostgreSQL client"
    db="$(pg_database "$url")"
    check_identifier "$db" "database"
    admin="$(pg_admin_url "$url")"
    exists="$(psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "SELECT 1 FROM pg_database WHERE datname = '$db'")" \
        || die "cannot connect to $(printf '%s' "$admin" | sed -E 's#//[^@]*@#//***@#')"
    if [[ "$exists" != "1" ]]; then
        psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null
        echo "created database $db"
    else
        echo "database $db exists"
    fi
    if [[ -n "$role" ]]; then
        check_identifier "$role" "role"
        [[ -n "$password_file" && -r "$password_file" ]] || die "--role needs a readable --password-file"
        password="$(head -n1 "$password_file")"
        [[ -n "$password" ]] || die "$password_file is empty"
        has_role="$(psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "SELECT 1 FROM pg_roles WHERE rolname = '$role'")"
        if [[ "$has_role" != "1" ]]; then
            psql "$admin" -XAtq -v ON_ERROR_STOP=1 -v pw="$password" \
                -c "CREATE ROLE \"$role\" LOGIN CREATEROLE NOSUPERUSER PASSWORD :'pw'" >/dev/null
            echo "created role $role (LOGIN CREATEROLE)"
        else
            echo "role $role exists"
        fi
        psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "ALTER DATABASE \"$db\" OWNER TO \"$role\"" >/dev/null
        psql "$(pg_plain_url "$url")" -XAtq -v ON_ERROR_STOP=1 \
            -c "ALTER SCHEMA public OWNER TO \"$role\"" >/dev/null
    fi
    "$MAGIC_BIN" migrate --database-url "$url" --data-dir "$data_dir"
elif [[ -z "$url" ]]; then
    "$MAGIC_BIN" migrate --data-dir "$data_dir"
else
    "$MAGIC_BIN" migrate --database-url "$url" --data-dir "$data_dir"
fi
