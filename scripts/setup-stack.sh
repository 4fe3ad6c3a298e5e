#!/usr/bin/env bash
# Install, from nothing, everything the black-box tests need, into $STACK_DIR
# (default: <repo>/.stack). Idempotent: finished steps are detected and skipped.
#
#   $STACK_DIR/bin/ferretdb        FerretDB v1.24.0 (SQLite backend), built via the Go module proxy
#   $STACK_DIR/bin/mongodump       mongo-tools (only if the Go module proxy serves the module, see step 2)
#   $STACK_DIR/bin/mongorestore
#   $STACK_DIR/venv                Python venv from tests/blackbox/requirements.txt
#
# Environment:
#   STACK_DIR              install prefix (default <repo>/.stack)
#   REQUIRE_MONGO_TOOLS=1  fail (instead of warn) when mongodump/mongorestore cannot be built
#   PYTHON                 interpreter used to create the venv (default python3)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$REPO_DIR/.stack}"
PYTHON="${PYTHON:-python3}"
REQUIRE_MONGO_TOOLS="${REQUIRE_MONGO_TOOLS:-0}"

FERRETDB_MODULE="github.com/FerretDB/FerretDB"
FERRETDB_VERSION="v1.24.0"
MONGO_TOOLS_MODULE="github.com/mongodb/mongo-tools"
# Refs tried in order (release tags are 100.x.y, not semver: the go command resolves them
# as revisions into pseudo-versions).
MONGO_TOOLS_REFS=(100.10.0 100.9.5 100.9.4)
REQUIREMENTS="$REPO_DIR/tests/blackbox/requirements.txt"

# Go settings: never download another toolchain (go.mod toolchain lines), pure-Go builds,
# no VCS stamping (FerretDB's version package panics if vcs.revision != commit.txt).
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS="-buildvcs=false"

mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
BIN_DIR="$STACK_DIR/bin"
mkdir -p "$BIN_DIR"

SCRIPT_START=$SECONDS
STEP_START=0
STEP_NAME=""
TMP_ROOT="$(mktemp -d "${TMPDIR:-/tmp}/ddsvault-stack.XXXXXX")"
VENV_PID=""
cleanup() {
    # let a background venv step finish rather than leave it orphaned
    if [ -n "$VENV_PID" ]; then wait "$VENV_PID" 2>/dev/null || true; fi
    # module copies are made writable, so this removes everything
    [ -n "${TMP_ROOT:-}" ] && [ -d "$TMP_ROOT" ] && rm -rf "$TMP_ROOT"
    return 0
}
trap cleanup EXIT

log() { printf '[setup-stack] %s\n' "$*"; }
warn() { printf '[setup-stack] WARNING: %s\n' "$*" >&2; }
die() { printf '[setup-stack] ERROR: %s\n' "$*" >&2; exit 1; }
step_begin() {
    STEP_NAME="$1"
    STEP_START=$SECONDS
    log "==> $STEP_NAME"
}
step_end() {
    log "<== $STEP_NAME: ${1:-done} ($((SECONDS - STEP_START))s)"
}

# Module cache directories are read-only; make copies writable before building and
# before deleting them.
copy_module() { # <module Dir> <dest>
    cp -R "$1/." "$2/"
    chmod -R u+w "$2"
}

# Print the "Dir" of a module downloaded through the Go module proxy, or fail with the
# go command's error on stderr.
go_mod_dir() { # <module@version>
    local json dir err
    json="$(cd "$TMP_ROOT" && go mod download -json "$1" 2>&1)" || true
    dir="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    if [ -n "$dir" ] && [ -d "$dir" ]; then
        printf '%s\n' "$dir"
        return 0
    fi
    err="$(printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Error": "\(.*\)",\{0,1\}$/\1/p' | head -n1)"
    printf '%s\n' "${err:-$json}" >&2
    return 1
}

command -v go >/dev/null 2>&1 || die "go not found in PATH (need Go >= 1.22)"
log "repo=$REPO_DIR stack=$STACK_DIR ($(go version))"

# --------------------------------------------------------------------------------------
# 3. Python venv. Defined here and started first, in the background: it overlaps with the
#    Go builds (CPU-bound; pip is mostly network-bound). Its output is printed at the end.
# --------------------------------------------------------------------------------------
VENV="$STACK_DIR/venv"
setup_venv() {
    step_begin "Python venv"
    [ -f "$REQUIREMENTS" ] || die "missing $REQUIREMENTS"
    local stamp="$VENV/.requirements.sha256" req_hash
    req_hash="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
    if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$req_hash" ] \
        && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        step_end "requirements unchanged, skipped"
        return 0
    fi
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        log "creating venv with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV"
    fi
    rm -f "$stamp"
    log "installing $REQUIREMENTS"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    "$VENV/bin/python" - <<'PYEOF'
from alibabacloud_dds20151201.client import Client  # noqa: F401
from alibabacloud_tea_openapi import utils_models  # noqa: F401
from aliyunsdkcore.client import AcsClient  # noqa: F401
from aliyunsdkdds.request.v20151201.CreateBackupRequest import CreateBackupRequest  # noqa: F401
import pymongo, pytest, requests, zstandard  # noqa: F401,E401
PYEOF
    printf '%s\n' "$req_hash" >"$stamp"
    step_end "installed ($(grep -c '==' "$REQUIREMENTS") pinned packages)"
}

log "starting the Python venv step in the background (its output follows the Go steps)"
VENV_LOG="$TMP_ROOT/venv.log"
( setup_venv ) >"$VENV_LOG" 2>&1 &
VENV_PID=$!

# --------------------------------------------------------------------------------------
# 1. FerretDB
# --------------------------------------------------------------------------------------
step_begin "FerretDB $FERRETDB_VERSION"
FERRETDB_BIN="$BIN_DIR/ferretdb"
# (capture the output first: with pipefail, `ferretdb --version | grep -q` can fail on SIGPIPE)
ferretdb_version() { "$FERRETDB_BIN" --version 2>/dev/null | sed -n 's/^version: //p'; }
if [ -x "$FERRETDB_BIN" ] && [ "$(ferretdb_version || true)" = "$FERRETDB_VERSION" ]; then
    step_end "already installed, skipped"
else
    log "downloading $FERRETDB_MODULE@$FERRETDB_VERSION from the Go module proxy"
    src_dir="$(go_mod_dir "$FERRETDB_MODULE@$FERRETDB_VERSION")" || die "cannot download $FERRETDB_MODULE@$FERRETDB_VERSION"
    work="$TMP_ROOT/ferretdb"
    mkdir -p "$work"
    copy_module "$src_dir" "$work"
    # go install/build of the module copy panics at init unless version.txt starts with "v";
    # commit.txt, if present, must equal vcs.revision (there is none), so it must be absent.
    printf '%s\n' "$FERRETDB_VERSION" >"$work/build/version/version.txt"
    rm -f "$work/build/version/commit.txt"
    log "building ferretdb (downloads ~60 modules on a cold module cache; about 1 min on 2 cores)"
    ldflags="-s -w"
    build_log="$TMP_ROOT/ferretdb-build.log"
    if ! (cd "$work" && go build -trimpath -ldflags="$ldflags" -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb) >"$build_log" 2>&1; then
        if grep -q 'linkname' "$build_log"; then
            warn "toolchain refused a //go:linkname, retrying with -checklinkname=0"
            (cd "$work" && go build -trimpath -ldflags="$ldflags -checklinkname=0" -o "$FERRETDB_BIN.tmp" ./cmd/ferretdb) \
                >"$build_log" 2>&1 || { cat "$build_log" >&2; die "ferretdb build failed"; }
        else
            cat "$build_log" >&2
            die "ferretdb build failed"
        fi
    fi
    mv -f "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    got="$(ferretdb_version || true)"
    [ "$got" = "$FERRETDB_VERSION" ] || die "built ferretdb reports version '$got', expected $FERRETDB_VERSION"
    step_end "built $FERRETDB_BIN"
fi

# --------------------------------------------------------------------------------------
# 2. mongodump / mongorestore (mongo-tools)
# --------------------------------------------------------------------------------------
step_begin "mongodump + mongorestore (mongo-tools)"
UNAVAILABLE_MARK="$STACK_DIR/mongo-tools.unavailable"
if [ -x "$BIN_DIR/mongodump" ] && [ -x "$BIN_DIR/mongorestore" ]; then
    rm -f "$UNAVAILABLE_MARK"
    step_end "already installed, skipped"
else
    tools_dir=""
    tools_ref=""
    errors=""
    for ref in "${MONGO_TOOLS_REFS[@]}"; do
        log "trying $MONGO_TOOLS_MODULE@$ref"
        if tools_dir="$(go_mod_dir "$MONGO_TOOLS_MODULE@$ref" 2>"$TMP_ROOT/mongo-tools.err")"; then
            tools_ref="$ref"
            break
        fi
        errors+="$ref: $(head -c 400 "$TMP_ROOT/mongo-tools.err")"$'\n'
    done
    if [ -z "$tools_ref" ]; then
        printf '%s' "$errors" >"$UNAVAILABLE_MARK"
        msg="the Go module proxy did not serve $MONGO_TOOLS_MODULE (tried ${MONGO_TOOLS_REFS[*]}); mongodump/mongorestore are NOT installed (reasons in $UNAVAILABLE_MARK)"
        if [ "$REQUIRE_MONGO_TOOLS" = "1" ]; then
            printf '%s' "$errors" >&2
            die "$msg; REQUIRE_MONGO_TOOLS=1"
        fi
        warn "$msg; tests that need them will be skipped"
        step_end "unavailable"
    else
        work="$TMP_ROOT/mongo-tools"
        mkdir -p "$work"
        copy_module "$tools_dir" "$work"
        ldflags="-s -w -X main.VersionStr=$tools_ref -X main.GitCommit=none"
        for tool in mongodump mongorestore; do
            log "building $tool ($tools_ref)"
            (cd "$work" && go build -mod=mod -trimpath -ldflags="$ldflags" -o "$BIN_DIR/$tool.tmp" "./$tool/main") \
                || die "$tool build failed"
            mv -f "$BIN_DIR/$tool.tmp" "$BIN_DIR/$tool"
        done
        rm -f "$UNAVAILABLE_MARK"
        step_end "built from $MONGO_TOOLS_MODULE@$tools_ref"
    fi
fi

STACK_DIR="$STACK_DIR" "$REPO_DIR/scripts/setup-minio.sh" || die "MinIO (S3 server for the repository tests) could not be built"

venv_rc=0
wait "$VENV_PID" || venv_rc=$?
VENV_PID=""
cat "$VENV_LOG"
[ "$venv_rc" -eq 0 ] || die "Python venv step failed (exit $venv_rc)"

log "stack ready in $((SECONDS - SCRIPT_START))s:"
for b in ferretdb mongodump mongorestore; do
    if [ -x "$BIN_DIR/$b" ]; then log "  $BIN_DIR/$b"; else log "  $BIN_DIR/$b (missing)"; fi
done
log "  $VENV/bin/python"
