#!/usr/bin/env bash
# Install, from nothing, everything the black-box tests need, into $STACK_DIR
# (default: <repo>/.stack). Idempotent: finished steps are detected and skipped.
#
#   $STACK_DIR/bin/ferretdb        FerretDB v1.24.0 (SQLite backend), built via the Go module proxy
#   $STACK_DIR/bin/mongodump       mongo-tools 100.18.0 (PATH, or built from ../shared/third_party, see step 2)
#   $STACK_DIR/bin/mongorestore
#   $STACK_DIR/mongo-tools-100.11.0/{mongodump,mongorestore}
#                                  the newest mongorestore whose inserts FerretDB 1.24 accepts
#   $STACK_DIR/venv                Python venv from tests/blackbox/requirements.txt
#   chromium, chromedriver         Debian packages chromium + chromium-driver (apt-get, when missing): the
#                                  console tests drive headless Chromium with selenium
#
# Environment:
#   STACK_DIR              install prefix (default <repo>/.stack)
#   REQUIRE_MONGO_TOOLS=1  fail (instead of warn) when mongodump/mongorestore cannot be installed
#                          (implied by CI=true: CI may not pass by skipping the tests that need them)
#   MONGO_TOOLS_SRC        folder with mongo-tools' build.sh and sources
#                          (default <repo>/../shared/third_party/mongo-tools)
#   PYTHON                 interpreter used to create the venv (default python3)
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK_DIR="${STACK_DIR:-$REPO_DIR/.stack}"
PYTHON="${PYTHON:-python3}"
REQUIRE_MONGO_TOOLS="${REQUIRE_MONGO_TOOLS:-0}"

FERRETDB_MODULE="github.com/FerretDB/FerretDB"
FERRETDB_VERSION="v1.24.0"
# mongo-tools: see step 2 (the Go module proxy refuses github.com/mongodb/mongo-tools: its tags are not
# semver, so the sources come from shared/third_party beside the repository).
MONGO_TOOLS_CURRENT="100.18.0"
MONGO_TOOLS_FERRETDB="100.11.0"
MONGO_TOOLS_SRC="${MONGO_TOOLS_SRC:-$REPO_DIR/../shared/third_party/mongo-tools}"
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
import prometheus_client.openmetrics.parser  # noqa: F401
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
# 2. mongodump / mongorestore (mongo-tools), two releases:
#    - MONGO_TOOLS_CURRENT into $BIN_DIR: the tools users run today (mongodump of FerretDB, reading
#      archives, every check that does not insert into FerretDB);
#    - MONGO_TOOLS_FERRETDB into $STACK_DIR/mongo-tools-<version>: the newest mongorestore whose inserts
#      FerretDB 1.24 accepts (later releases add `bypassEmptyTsReplacement`, which FerretDB refuses).
#    Each comes, in order, from: binaries already there that report the version (skip); mongodump and
#    mongorestore on PATH that report it (linked, e.g. MongoDB's official packages); a build from the
#    source archives in <repo>/../shared/third_party/mongo-tools (offline, ~30 s each).
# --------------------------------------------------------------------------------------
tool_version() { # <binary>: the release it reports, e.g. 100.18.0 (empty if it does not run)
    local out
    out="$("$1" --version 2>/dev/null)" || return 0
    printf '%s\n' "$out" | sed -n 's/^[a-z]* version: //p' | head -n1
}
tools_report() { # <dir> <version>: true when both binaries in <dir> report <version>
    local t
    for t in mongodump mongorestore; do
        [ -x "$1/$t" ] && [ "$(tool_version "$1/$t")" = "$2" ] || return 1
    done
}
install_mongo_tools() { # <version> <dest dir>; prints why not on stderr and fails when it cannot
    local version="$1" dest="$2" t p build_log
    if tools_report "$dest" "$version"; then
        step_end "$version already in $dest, skipped"
        return 0
    fi
    mkdir -p "$dest"
    if p="$(command -v mongorestore 2>/dev/null)" && tools_report "$(dirname "$p")" "$version" \
        && [ "$(cd "$(dirname "$p")" && pwd)" != "$dest" ]; then
        for t in mongodump mongorestore; do ln -sfn "$(dirname "$p")/$t" "$dest/$t"; done
        step_end "$version linked from PATH ($(dirname "$p"))"
        return 0
    fi
    if [ ! -x "$MONGO_TOOLS_SRC/build.sh" ]; then
        printf 'mongo-tools %s: no mongodump/mongorestore %s on PATH and no source archives in %s\n' \
            "$version" "$version" "$MONGO_TOOLS_SRC" >&2
        return 1
    fi
    log "building mongodump + mongorestore $version from $MONGO_TOOLS_SRC into $dest"
    build_log="$TMP_ROOT/mongo-tools-$version.log"
    # build.sh sets its own Go flags (-mod=vendor, offline); drop ours (-buildvcs=false is passed by it).
    # Its exit status is not the verdict: its last line (`mongorestore --version | head -n 1` under
    # pipefail) can fail on SIGPIPE after a good build. The verdict is what the binaries report.
    (unset GOFLAGS; "$MONGO_TOOLS_SRC/build.sh" "$dest" "$version") >"$build_log" 2>&1 || true
    if ! tools_report "$dest" "$version"; then
        printf 'mongo-tools %s: %s/build.sh did not produce binaries reporting %s in %s (%s):\n%s\n' \
            "$version" "$MONGO_TOOLS_SRC" "$version" "$dest" "$(go version 2>&1)" "$(tail -n 20 "$build_log")" >&2
        return 1
    fi
    step_end "built $version into $dest"
}

UNAVAILABLE_MARK="$STACK_DIR/mongo-tools.unavailable"
rm -f "$UNAVAILABLE_MARK"
for spec in "$MONGO_TOOLS_CURRENT:$BIN_DIR" "$MONGO_TOOLS_FERRETDB:$STACK_DIR/mongo-tools-$MONGO_TOOLS_FERRETDB"; do
    version="${spec%%:*}"
    step_begin "mongodump + mongorestore $version (mongo-tools)"
    if ! install_mongo_tools "$version" "${spec#*:}" 2>"$TMP_ROOT/mongo-tools.err"; then
        cat "$TMP_ROOT/mongo-tools.err" >>"$UNAVAILABLE_MARK"
        msg="mongodump/mongorestore $version are NOT installed: $(cat "$TMP_ROOT/mongo-tools.err")"
        # CI may not pass by skipping the tests that need them.
        if [ "$REQUIRE_MONGO_TOOLS" = "1" ] || [ "${CI:-}" = "true" ]; then
            die "$msg (CI=true or REQUIRE_MONGO_TOOLS=1: required)"
        fi
        warn "$msg; tests that need them will be skipped"
        step_end "unavailable"
    fi
done

# PostgreSQL server binaries (Debian's `postgresql` package): the PostgreSQL catalog tests start throw-away clusters
# with initdb/pg_ctl, so no service needs to run.
step_begin "PostgreSQL server binaries"
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    step_end "already installed ($(ls -d /usr/lib/postgresql/*/bin/initdb | head -1)), skipped"
else
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq || die "apt-get update failed (PostgreSQL)"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql \
        || die "could not install the postgresql package"
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || die "postgresql installed but no initdb under /usr/lib/postgresql"
    step_end "installed"
fi

step_begin "headless Chromium (console tests)"
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    step_end "present, skipped"
elif command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    if apt-get install -y --no-install-recommends chromium chromium-driver >"$TMP_ROOT/chromium.log" 2>&1 ||
        { apt-get update >>"$TMP_ROOT/chromium.log" 2>&1 &&
            apt-get install -y --no-install-recommends chromium chromium-driver >>"$TMP_ROOT/chromium.log" 2>&1; }; then
        step_end "installed"
    else
        tail -5 "$TMP_ROOT/chromium.log" >&2
        # CI may not pass by skipping the console tests.
        [ "${CI:-}" = "true" ] && die "chromium/chromium-driver could not be installed (CI=true: required)"
        warn "chromium/chromium-driver could not be installed; the console tests will be skipped"
        step_end "unavailable"
    fi
else
    [ "${CI:-}" = "true" ] && die "chromium/chromium-driver missing and apt-get unusable (not root?): install them"
    warn "install the Debian packages chromium and chromium-driver for the console tests"
    step_end "unavailable"
fi

STACK_DIR="$STACK_DIR" "$REPO_DIR/scripts/setup-minio.sh" || die "MinIO (S3 server for the repository tests) could not be built"

venv_rc=0
wait "$VENV_PID" || venv_rc=$?
VENV_PID=""
cat "$VENV_LOG"
[ "$venv_rc" -eq 0 ] || die "Python venv step failed (exit $venv_rc)"

log "stack ready in $((SECONDS - SCRIPT_START))s:"
for b in "$BIN_DIR/ferretdb" "$BIN_DIR/mongodump" "$BIN_DIR/mongorestore" \
    "$STACK_DIR/mongo-tools-$MONGO_TOOLS_FERRETDB/mongodump" "$STACK_DIR/mongo-tools-$MONGO_TOOLS_FERRETDB/mongorestore"; do
    if [ -x "$b" ]; then log "  $b"; else log "  $b (missing)"; fi
done
log "  $VENV/bin/python"
