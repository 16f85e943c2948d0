#!/usr/bin/env bash
# Restore a snapshot made by scripts/snapshot.sh into an empty target: check the checksums
# and that the keys available here are the snapshot's keys (by fingerprint), then restore the
# databases (pg_restore into a new or empty PostgreSQL database; SQLite files into the data
# dir). Start the server afterwards and compare `magic audit verify` with the printed head.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/restore.sh --snapshot FILE.tar.gz [--data-dir DIR] [--database-url URL] [--skip-key-check]

  --snapshot FILE     a tarball written by scripts/snapshot.sh (required)
  --data-dir DIR      data dir to restore into (default: \$MAGIC_DATA_DIR or ./.magic)
  --database-url URL  PostgreSQL database to restore into (default: \$DATABASE_URL); created
                      when missing, refused when it already holds tables
  --skip-key-check    restore even when the master/audit keys here differ from the snapshot's
                      (secrets will not decrypt, old checkpoints will not verify)
  -h, --help          this help

The keys are looked up as the server will: MAGIC_MASTER_KEY / MAGIC_MASTER_KEY_FILE /
DATA_DIR/master.key and AUDIT_SIGNING_KEY / AUDIT_SIGNING_KEY_FILE / DATA_DIR/audit_signing.key.
USAGE
}

url="${DATABASE_URL:-}"
data_dir="${MAGIC_DATA_DIR:-./.magic}"
snapshot=""
key_check=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --snapshot) snapshot="${2:?--snapshot needs a value}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        --database-url) url="${2:?--database-url needs a value}"; shift 2 ;;
        --skip-key-check) key_check=0; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; usage_error "unknown argument ${1@Q}" ;;
    esac
done
[[ -n "$snapshot" ]] || { usage >&2; usage_error "--snapshot is required"; }
[[ -r "$snapshot" ]] || die "cannot read $snapshot"
need tar
need sha256sum

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xzf "$snapshot"
snap="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'magic-snapshot-*' | head -n1)"
[[ -n "$snap" && -f "$snap/manifest.json" && -f "$snap/SHA256SUMS" ]] || die "$snapshot is not a magic snapshot"
(cd "$snap" && sha256sum --quiet -c SHA256SUMS) || die "checksum mismatch in $snapshot"
grep -q '"format": "magic-snapshot/1"' "$snap/manifest.json" || die "unknown snapshot format"

# The keys must be the snapshot's keys.
current_fp() { # INLINE_VAR FILE_VAR DEFAULT_FILE
    local inline="${!1:-}" file="${!2:-}"
    if [[ -n "$inline" ]]; then printf '%s' "$inline" | sha256sum | cut -d' ' -f1
    elif [[ -n "$file" ]]; then [[ -r "$file" ]] && sha256_of "$file" || true
    elif [[ -r "$3" ]]; then sha256_of "$3"
    fi
}
snap_fp() { # KEY
    sed -nE "s/.*\"$1\": *\\{[^}]*\"sha256\": *\"([0-9a-f]+)\".*/\\1/p" "$snap/keys.json" | head -n1
}
if [[ $key_check -eq 1 ]]; then
    for pair in "master_key MAGIC_MASTER_KEY MAGIC_MASTER_KEY_FILE $data_dir/master.key" \
        "audit_signing_key AUDIT_SIGNING_KEY AUDIT_SIGNING_KEY_FILE $data_dir/audit_signing.key"; do
        read -r key inline_var file_var default <<<"$pair"
        want="$(snap_fp "$key")"
        [[ -n "$want" ]] || continue
        have="$(current_fp "$inline_var" "$file_var" "$default")"
        [[ "$have" == "$want" ]] || die "$key here (${have:-none}) is not the snapshot's ($want): provide it ($inline_var / $file_var) or pass --skip-key-check"
    done
fi

if [[ -f "$snap/db/runtime.pgdump" ]]; then
    is_postgres_url "$url" || die "the snapshot holds a PostgreSQL dump: give --database-url postgres://…"
    need psql
    need pg_restore
    db="$(pg_database "$url")"
    check_identifier "$db" "database"
    admin="$(pg_admin_url "$url")"
    exists="$(psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "SELECT 1 FROM pg_database WHERE datname = '$db'")"
    if [[ "$exists" != "1" ]]; then
        psql "$admin" -XAtq -v ON_ERROR_STOP=1 -c "CREATE DATABASE \"$db\"" >/dev/null
    else
        tables="$(psql "$(pg_plain_url "$url")" -XAtq -v ON_ERROR_STOP=1 \
            -c "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog','information_schema')")"
        [[ "$tables" == "0" ]] || die "database $db is not empty ($tables tables); restore into a new database"
    fi
    pg_restore --no-owner --exit-on-error -d "$(pg_plain_url "$url")" "$snap/db/runtime.pgdump"
    echo "restored PostgreSQL database $db"
    if [[ -f "$snap/db/app.pgdump" ]]; then
        app_url="${MAGIC_APP_DATABASE_URL:-}"
        is_postgres_url "$app_url" || die "the snapshot holds an application database dump: set MAGIC_APP_DATABASE_URL"
        pg_restore --no-owner --exit-on-error -d "$(pg_plain_url "$app_url")" "$snap/db/app.pgdump"
        echo "restored application database $(pg_database "$app_url")"
    fi
fi
mkdir -p "$data_dir"
for f in magic.db app.db; do
    if [[ -f "$snap/db/$f" ]]; then
        for existing in "$data_dir/$f" "$data_dir/$f-wal" "$data_dir/$f-shm"; do
            [[ ! -e "$existing" ]] || die "$existing exists; restore into an empty data dir"
        done
        cp "$snap/db/$f" "$data_dir/$f.tmp"
        mv "$data_dir/$f.tmp" "$data_dir/$f"
        echo "restored $data_dir/$f"
    fi
done
head_seq="$(sed -nE 's/.*"audit_head_seq": *([0-9]+).*/\1/p' "$snap/manifest.json")"
head_hash="$(sed -nE 's/.*"audit_head_hash": *"([^"]*)".*/\1/p' "$snap/manifest.json")"
echo "restored; start the server: \`magic audit verify\` must report head seq $head_seq ($head_hash) or later"
