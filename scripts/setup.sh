#!/usr/bin/env bash
# Prepare a machine to run pgpoolkit's test suite: the PostgreSQL server programs
# (initdb, pg_ctl, postgres) and an editable install of pgpoolkit with its dev extras.
#
# Idempotent, and quick when everything is already in place.
#
# Environment:
#   PYTHON                 interpreter to install into (default: python3)
#   PGPOOLKIT_PG_BINDIR    directory holding initdb/pg_ctl (skips the search)
#   PGPOOLKIT_SETUP_FORCE  set to 1 to reinstall the Python packages unconditionally
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" == 0 ]]; }

# --------------------------------------------------------------------------------------
# PostgreSQL server programs (same search as pgpoolkit.testing.find_postgres_bindir)
# --------------------------------------------------------------------------------------

find_pg_bindir() {
    local d f
    if [[ -n "${PGPOOLKIT_PG_BINDIR:-}" ]]; then
        if [[ -x "$PGPOOLKIT_PG_BINDIR/initdb" && -x "$PGPOOLKIT_PG_BINDIR/pg_ctl" ]]; then
            echo "$PGPOOLKIT_PG_BINDIR"
            return 0
        fi
        return 1
    fi
    if command -v pg_config >/dev/null 2>&1; then
        d="$(pg_config --bindir 2>/dev/null || true)"
        if [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    fi
    for f in $(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V -r); do
        d="$(dirname "$f")"
        if [[ -x "$d/initdb" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    done
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

apt_install() {
    log "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    if [[ -z "${_APT_UPDATED:-}" ]]; then
        apt-get update -qq </dev/null
        _APT_UPDATED=1
    fi
    apt-get install -y -qq -o Dpkg::Use-Pty=0 "$@" </dev/null
}

if [[ -n "${PGPOOLKIT_PG_BINDIR:-}" ]] \
    && ! [[ -x "$PGPOOLKIT_PG_BINDIR/initdb" && -x "$PGPOOLKIT_PG_BINDIR/pg_ctl" ]]; then
    die "PGPOOLKIT_PG_BINDIR=$PGPOOLKIT_PG_BINDIR does not contain initdb and pg_ctl"
fi
if ! pg_bindir="$(find_pg_bindir)"; then
    if is_root && command -v apt-get >/dev/null 2>&1; then
        log "PostgreSQL server programs not found: installing the 'postgresql' package"
        # Note: the Debian package may create and start a cluster on port 5432. That is
        # harmless: the test clusters use private sockets and other ports.
        apt_install postgresql
        pg_bindir="$(find_pg_bindir)" || die "installed 'postgresql' but still no initdb/pg_ctl"
    else
        cat >&2 <<'EOF'
setup: error: PostgreSQL server programs (initdb, pg_ctl) not found.
  Install them, e.g. (Debian/Ubuntu, as root):  apt-get install -y postgresql
  (Fedora/RHEL: dnf install postgresql-server; macOS: brew install postgresql)
  or set PGPOOLKIT_PG_BINDIR to the directory containing initdb and pg_ctl.
EOF
        exit 1
    fi
fi
log "PostgreSQL: $("$pg_bindir/pg_ctl" --version) ($pg_bindir)"

# initdb/pg_ctl refuse to run as root: the test helpers then use runuser (util-linux).
if is_root && ! command -v runuser >/dev/null 2>&1 && ! [[ -x /usr/sbin/runuser || -x /sbin/runuser ]]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt_install util-linux
    else
        log "warning: runuser not found (package util-linux); falling back to su"
    fi
fi

# --------------------------------------------------------------------------------------
# Python packages
# --------------------------------------------------------------------------------------

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
    if [[ -z "${PYTHON:-}" ]] && command -v python >/dev/null 2>&1; then
        py=python
    else
        die "Python interpreter '$py' not found (set PYTHON=/path/to/python3.10+)"
    fi
fi
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
    || die "$("$py" --version 2>&1) is too old: pgpoolkit needs Python 3.10+ (set PYTHON=...)"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

python_env_ok() {
    # pgpoolkit resolves to this checkout (without importing it) and the dev tools exist.
    "$py" - <<'EOF'
import importlib.util, os, sys
spec = importlib.util.find_spec("pgpoolkit")
here = os.path.realpath(os.path.join("src", "pgpoolkit"))
locations = list(spec.submodule_search_locations or []) if spec else []
if here not in (os.path.realpath(p) for p in locations):
    sys.exit(1)
for mod in ("psycopg", "psycopg_pool", "pytest", "pytest_timeout", "hypothesis", "mypy", "ruff"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(1)
EOF
}

cache_dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/pgpoolkit"
stamp="$cache_dir/setup-$(printf '%s' "$PWD" | sha256sum | cut -c1-16).stamp"
wanted="$("$py" -c 'import sys; print(sys.executable)') $(sha256sum pyproject.toml | cut -d' ' -f1)"

if [[ "${PGPOOLKIT_SETUP_FORCE:-0}" != 1 && -f "$stamp" && "$(cat "$stamp")" == "$wanted" ]] \
    && python_env_ok; then
    log "Python packages up to date ($("$py" --version 2>&1))"
    exit 0
fi

if ! "$py" -m pip --version >/dev/null 2>&1; then
    log "pip missing for $py: trying ensurepip"
    if ! "$py" -m ensurepip --upgrade >/dev/null 2>&1; then
        if is_root && command -v apt-get >/dev/null 2>&1 \
            && [[ "$(command -v "$py")" == /usr/bin/* ]]; then
            apt_install python3-pip
        else
            die "pip is not available for $py: install it (e.g. apt-get install -y python3-pip) or use a virtualenv"
        fi
    fi
fi

# PEP 668 ("externally managed" system Python, e.g. Debian's /usr/bin/python3, outside a venv)
if "$py" - <<'EOF'
import os, sys, sysconfig
in_venv = sys.prefix != getattr(sys, "base_prefix", sys.prefix)
marker = os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")
sys.exit(0 if (not in_venv and os.path.exists(marker)) else 1)
EOF
then
    if [[ "${CI:-}" == true || "${CI:-}" == 1 ]]; then
        log "externally managed Python on CI: installing with --break-system-packages"
        export PIP_BREAK_SYSTEM_PACKAGES=1
    elif [[ -z "${PIP_BREAK_SYSTEM_PACKAGES:-}" ]]; then
        die "$py is an externally managed system Python: use a virtualenv
  ($py -m venv .venv && . .venv/bin/activate && PYTHON=python scripts/setup.sh)
  or set PIP_BREAK_SYSTEM_PACKAGES=1"
    fi
fi

log "pip install -e '.[dev]' into $("$py" --version 2>&1)"
"$py" -m pip install -q -e ".[dev]" </dev/null
python_env_ok || die "pgpoolkit or its dev tools are still not importable after pip install"

mkdir -p "$cache_dir" 2>/dev/null && printf '%s\n' "$wanted" >"$stamp" 2>/dev/null || true
log "done"
