#!/usr/bin/env bash
# One restorable snapshot of a runtime, as a timestamped tarball: the databases
# (scripts/backup_db.sh), every controller version (`magic export --all`, with the active one
# marked), the audit chain head (`magic audit verify --json`), references to the secrets master
# key and the audit signing key (where they are and their SHA-256 fingerprints, never the keys
# themselves), a manifest and checksums.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/lib.sh
source "$here/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/snapshot.sh --output DIR [--data-dir DIR] [--database-url URL]

Writes DIR/magic-snapshot-YYYYMMDDTHHMMSSZ.tar.gz holding:
  db/                 database backups (runtime.pgdump | magic.db, app.pgdump | app.db)
  controllers/        magic export --all (NAME/VERSION/..., NAME/ACTIVE)
  audit-head.json     magic audit verify --json (head seq and hash; the chain must verify)
  keys.json           where the master key and audit signing key are, with fingerprints
  manifest.json       what, when, from which runtime
  SHA256SUMS          sha256sum -c compatible checksums of every file

The running server is reached with MAGIC_URL and MAGIC_API_KEY (as every magic command).
The keys are not copied: keep them in your secret store; restore.sh checks the fingerprints.

  --output DIR        where to write the tarball (required)
  --data-dir DIR      data dir (default: \$MAGIC_DATA_DIR or ./.magic)
  --database-url URL  runtime store (default: \$DATABASE_URL)
  -h, --help          this help
USAGE
}

url="${DATABASE_URL:-}"
data_dir="${MAGIC_DATA_DIR:-./.magic}"
output=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --output) output="${2:?--output needs a value}"; shift 2 ;;
        --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
        --database-url) url="${2:?--database-url needs a value}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; usage_error "unknown argument ${1@Q}" ;;
    esac
done
[[ -n "$output" ]] || { usage >&2; usage_error "--output is required"; }
need tar
need sha256sum
mkdir -p "$output"

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
name="magic-snapshot-$stamp"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
snap="$work/$name"
mkdir -p "$snap"

# 1. The chain head first: the database copy holds at least this much of the chain.
"$MAGIC_BIN" audit verify --json >"$snap/audit-head.json" \
    || die "the audit chain does not verify (see $snap/audit-head.json); not snapshotting a broken chain"
# 2. The databases.
MAGIC_BIN="$MAGIC_BIN" "$here/backup_db.sh" --output "$snap/db" --data-dir "$data_dir" \
    ${url:+--database-url "$url"} >/dev/null
# 3. Every controller version and which one is active.
mkdir -p "$snap/controllers"
"$MAGIC_BIN" export --all --output "$snap/controllers" >/dev/null

# 4. Key references (never the keys).
key_ref() { # LABEL INLINE_VAR FILE_VAR DEFAULT_FILE
    local inline="${!2:-}" file="${!3:-}"
    if [[ -n "$inline" ]]; then
        printf '{"source": "env:%s", "sha256": "%s"}' "$2" "$(printf '%s' "$inline" | sha256sum | cut -d' ' -f1)"
    elif [[ -n "$file" ]]; then
        [[ -r "$file" ]] || die "$3=$file is not readable"
        printf '{"source": "file:%s", "sha256": "%s"}' "$file" "$(sha256_of "$file")"
    elif [[ -r "$4" ]]; then
        printf '{"source": "file:%s", "sha256": "%s"}' "$(cd "$(dirname "$4")" && pwd)/$(basename "$4")" "$(sha256_of "$4")"
    else
        printf '{"source": "none", "sha256": null}'
    fi
}
{
    printf '{\n  "master_key": %s,\n' "$(key_ref master MAGIC_MASTER_KEY MAGIC_MASTER_KEY_FILE "$data_dir/master.key")"
    printf '  "audit_signing_key": %s\n}\n' "$(key_ref audit AUDIT_SIGNING_KEY AUDIT_SIGNING_KEY_FILE "$data_dir/audit_signing.key")"
} >"$snap/keys.json"

# 5. Manifest and checksums.
if is_postgres_url "$url"; then kind=postgresql; else kind=sqlite; fi
head_seq="$(sed -nE 's/^ *"head_seq": *([0-9]+).*/\1/p' "$snap/audit-head.json" | head -n1)"
head_hash="$(sed -nE 's/^ *"head_hash": *"([^"]*)".*/\1/p' "$snap/audit-head.json" | head -n1)"
versions="$(find "$snap/controllers" -mindepth 2 -maxdepth 2 -type d | wc -l)"
cat >"$snap/manifest.json" <<JSON
{
  "format": "magic-snapshot/1",
  "created_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "magic_version": "$("$MAGIC_BIN" --version | sed 's/^magic //')",
  "database": "$kind",
  "audit_head_seq": ${head_seq:-0},
  "audit_head_hash": "${head_hash}",
  "controller_versions": $versions,
  "files": ["db/", "controllers/", "audit-head.json", "keys.json", "SHA256SUMS"]
}
JSON
(cd "$snap" && find . -type f ! -name SHA256SUMS -print0 | sort -z | xargs -0 sha256sum >SHA256SUMS)
tar -C "$work" -czf "$output/$name.tar.gz.tmp" "$name"
mv "$output/$name.tar.gz.tmp" "$output/$name.tar.gz"
echo "$output/$name.tar.gz"
