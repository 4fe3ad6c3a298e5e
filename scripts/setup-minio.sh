#!/usr/bin/env bash
# Build MinIO (the S3 server the repository tests run against) from the Go module proxy
# and put it at $STACK_DIR/bin/minio. Called by scripts/setup-stack.sh; runnable alone.
#
# The build takes 6-12 minutes on 2 cores, so the binary is cached by module version
# outside the checkout, in ${XDG_CACHE_HOME:-$HOME/.cache}/ddsvault/minio-<version>/minio,
# and built only when that file is absent. A new `@latest` (a new pseudo-version) means a
# new cache directory; old ones can be deleted by hand.
#
# Environment:
#   STACK_DIR       install prefix (default <repo>/.stack)
#   MINIO_VERSION   module query or version (default: the pinned pseudo-version below, so CI reuses
#                   the cached binary; "latest" to try the newest; falls back to MINIO_FALLBACK)
#   MINIO_CACHE     cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/ddsvault)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$REPO_DIR/.stack}"
MINIO_MODULE="github.com/minio/minio"
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
# A pseudo-version known to build with go1.26 (latest as of 2026-02), tried when the
# query above fails to resolve or to build.
MINIO_FALLBACK="v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_CACHE="${MINIO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ddsvault}"

export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"

log() { printf '[setup-minio] %s\n' "$*"; }
die() { printf '[setup-minio] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "go not found in PATH"
mkdir -p "$STACK_DIR/bin" "$MINIO_CACHE"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/ddsvault-minio.XXXXXX")"
cleanup() { [ -d "$TMP_ROOT" ] && chmod -R u+w "$TMP_ROOT" 2>/dev/null; rm -rf "$TMP_ROOT"; }
trap cleanup EXIT

# Resolve a query (latest, a tag, a pseudo-version) to the exact module version.
resolve() { # <query>
    (cd "$TMP_ROOT" && go list -m -f '{{.Version}}' "$MINIO_MODULE@$1" 2>/dev/null)
}

install_bin() { # <cached binary>
    ln -sf "$1" "$STACK_DIR/bin/minio.tmp"
    mv -f "$STACK_DIR/bin/minio.tmp" "$STACK_DIR/bin/minio"
    log "installed $STACK_DIR/bin/minio -> $1"
}

build() { # <version>; prints nothing, returns non-zero on failure
    local version="$1" dest="$MINIO_CACHE/minio-$1" json src work blog
    if [ -x "$dest/minio" ]; then
        log "cached: $dest/minio"
        install_bin "$dest/minio"
        return 0
    fi
    log "downloading $MINIO_MODULE@$version"
    json="$(cd "$TMP_ROOT" && go mod download -json "$MINIO_MODULE@$version" 2>&1)" || true
    src="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    [ -n "$src" ] && [ -d "$src" ] || { printf '%s\n' "$json" >&2; return 1; }
    # module cache copies are read-only; build from a writable copy
    work="$TMP_ROOT/minio-$version"
    mkdir -p "$work"
    cp -R "$src/." "$work/"
    chmod -R u+w "$work"
    blog="$TMP_ROOT/build.log"
    log "building minio $version (6-12 minutes on 2 cores on a cold module cache)"
    local ldflags="-s -w"
    if ! (cd "$work" && go build -trimpath -ldflags="$ldflags" -o "$work/minio.bin" .) >"$blog" 2>&1; then
        if grep -q 'linkname' "$blog"; then
            log "toolchain refused a //go:linkname, retrying with -checklinkname=0"
            (cd "$work" && go build -trimpath -ldflags="$ldflags -checklinkname=0" -o "$work/minio.bin" .) \
                >"$blog" 2>&1 || { tail -n 40 "$blog" >&2; return 1; }
        else
            tail -n 40 "$blog" >&2
            return 1
        fi
    fi
    mkdir -p "$dest"
    mv -f "$work/minio.bin" "$dest/minio.tmp"
    mv -f "$dest/minio.tmp" "$dest/minio"
    log "built $dest/minio"
    install_bin "$dest/minio"
}

version="$(resolve "$MINIO_VERSION" || true)"
if [ -n "$version" ] && build "$version"; then
    exit 0
fi
log "minio@$MINIO_VERSION (${version:-unresolved}) failed; trying $MINIO_FALLBACK"
[ "$version" != "$MINIO_FALLBACK" ] || die "minio build failed"
build "$MINIO_FALLBACK" || die "minio build failed for $MINIO_VERSION and $MINIO_FALLBACK"
