# shellcheck shell=bash
# use_venv DIR REQUIREMENTS...: a virtual environment of the repository's own, made with
# `python3 -m venv` and refreshed only when the requirement files or the interpreter change, then
# first on PATH. Nothing is installed into the system's Python: Debian's refuses `pip install`
# (PEP 668) and some images have no pip at all. PYTHON picks the interpreter (3.11 or newer).
# Sourced by scripts/test and scripts/bench from the repository root.

use_venv() {
    local venv=$1 python=${PYTHON:-python3} wanted stamp
    shift
    [[ $venv == /* ]] || venv=$PWD/$venv
    _venv_die() { echo "$(basename "$0"): $*" >&2; exit 1; }
    command -v "$python" >/dev/null || _venv_die "$python not found; install Python 3.11 or newer"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        _venv_die "$("$python" -V 2>&1) is too old; Python 3.11 or newer is needed (set PYTHON=...)"
    # What the environment was built from: the requirements and the exact interpreter.
    wanted=$({ cat "$@"; "$python" -c 'import sys; print(sys.executable, sys.version)'; } | sha256sum | cut -c1-16)
    stamp=$venv/.built-from
    # Two runs starting at once in one checkout build the environment one after the other.
    local lock
    exec {lock}>"$venv.lock"
    command -v flock >/dev/null && flock "$lock"
    if [[ ! -x $venv/bin/python || $(cat "$stamp" 2>/dev/null) != "$wanted" ]]; then
        # A half-made environment (python3 -m venv without ensurepip leaves one without pip) is made again.
        if ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
            rm -rf "$venv"
            echo "$(basename "$0"): making the environment $venv" >&2
            "$python" -m venv "$venv" || {
                rm -rf "$venv"
                _venv_die "'$python -m venv' failed; on Debian or Ubuntu install python3-venv (apt-get install python3-venv)"
            }
        fi
        echo "$(basename "$0"): installing $* into $venv" >&2
        local args=() file
        for file in "$@"; do args+=(-r "$file"); done
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${args[@]}"
        echo "$wanted" >"$stamp"
    fi
    exec {lock}>&-  # the tests themselves may run side by side
    # Tools the scripts and tests start by name (locust, granian, docker-compose-wait ...) come from here.
    export VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH
}
