#!/usr/bin/env bash
# Back up the runtime's databases into a folder: PostgreSQL with pg_dump (custom format,
# restorable with pg_restore), SQLite with an online copy (`magic backup`, VACUUM INTO: safe
# while the server runs). Both the runtime store and the controllers' application database.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/backup_db.sh --output DIR [--database-url URL] [--app-database-url URL] [--data-dir DIR]

Writes into DIR (created; existing files are never overwritten):
  runtime.pgdump  pg_dump -Fc of DATABASE_URL (PostgreSQL)
  app.pgdump      pg_dump -Fc of MAGIC_APP_DATABASE_URL when it is another PostgreSQL database
  magic.db        online copy of the SQLite runtime store (no DATABASE_URL)
  app.db          online copy of the SQLite application database (when present)

  --output DIR             where to write (required)
  --database-url URL       runtime store (default: \$DATABASE_URL)
  --app-database-url URL   application database (default: \$MAGIC_APP_DATABASE_URL)
  --data-dir DIR           data dir (default: \$MAGIC_DATA_DIR or ./.magic)
  -h, --help               this help

Environment: MAGIC_BIN (default: magic on PATH).
USAGE
}

url="${DATABASE_URL:-}"
app_url="${MAGIC_APP_DATABASE_URL:-}"
data_dir="${MAGIC_DATA_DIR:-./.magic}"
output=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --output) output="${2:?--output needs a value}"; shift 2 ;;
        --database-url) url="${2:?--database-url needs a value}"; shift 2 ;;
        --app-database-url) app_url="${2:?--app-database-url needs a value}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; usage_error "unknown argument ${1@Q}" ;;
    esac
done
[[ -n "$output" ]] || { usage >&2; usage_error "--output is required"; }
mkdir -p "$output"

dump() { # URL FILE
    [[ ! -e "$2" ]] || die "$2 exists; refusing to overwrite"
    need pg_dump "the PostgreSQL client, same major version as the server or newer"
    pg_dump --format=custom --no-owner --file="$2" "$(pg_plain_url "$1")"
    echo "$2"
}

if is_postgres_url "$url"; then
    dump "$url" "$output/runtime.pgdump"
elif [[ -n "$url" ]]; then
    die "DATABASE_URL ${url%%:*}:… is not PostgreSQL; unset it to back up the SQLite store in the data dir"
fi
if is_postgres_url "$app_url" && [[ "$(pg_plain_url "$app_url")" != "$(pg_plain_url "$url")" ]]; then
    dump "$app_url" "$output/app.pgdump"
fi
if [[ -f "$data_dir/magic.db" || -f "$data_dir/app.db" ]]; then
    "$MAGIC_BIN" backup --data-dir "$data_dir" --output "$output"
elif ! is_postgres_url "$url"; then
    die "no database found: no DATABASE_URL and no SQLite database in $data_dir"
fi
