#!/bin/sh
# Entry point of the local nginx stand-in image (scripts/docker-setup), with the
# same contract as the official image's: when the command is nginx, every
# *.envsh in /docker-entrypoint.d/ is sourced and every executable *.sh run, in
# version order, before the command replaces this shell.
set -eu

say() {
    [ -n "${NGINX_ENTRYPOINT_QUIET_LOGS:-}" ] || echo "$0: $*"
}

if [ "${1:-}" = nginx ] || [ "${1:-}" = nginx-debug ]; then
    scripts=$(find /docker-entrypoint.d/ -follow -type f 2>/dev/null | sort -V)
    IFS='
'  # one script per line: names may hold spaces
    for script in $scripts; do
        unset IFS
        case $script in
            *.envsh)
                if [ -x "$script" ]; then say "sourcing $script"; . "$script"
                else say "ignoring $script: not executable"; fi ;;
            *.sh)
                if [ -x "$script" ]; then say "running $script"; "$script"
                else say "ignoring $script: not executable"; fi ;;
            *) say "ignoring $script" ;;
        esac
    done
    unset IFS
    say "configuration done; starting $*"
fi

exec "$@"
