#!/bin/sh
# Keeps nginx's upstream addresses in step with Docker's DNS (POSIX sh: runs in
# the official Alpine and Debian nginx images and in the local stand-in).
#
# Before 1.27.3, open-source nginx resolves `server server:8000` in an upstream
# block only when it loads its configuration; it then keeps those addresses.
# Replicas that restart can come back with other addresses (Docker hands a
# freed address to the next container that asks), and `--scale` adds or removes
# some. This loop resolves CALC_UPSTREAM's host every NGINX_RESOLVE_INTERVAL
# seconds and, when the set of addresses changed, sends nginx SIGHUP: a
# graceful reload that resolves the name again and keeps serving meanwhile.
# While the name has no address at all (every replica stopped), nginx keeps
# its old configuration and answers with its 502 problem document.
#
# The official image's entrypoint runs every executable *.sh in
# /docker-entrypoint.d/ before it starts nginx; this one starts the loop in
# the background and returns at once.
set -eu

me=$(basename "$0")
upstream=${CALC_UPSTREAM:-}
interval=${NGINX_RESOLVE_INTERVAL:-2}
pidfile=${NGINX_PID_FILE:-/run/nginx.pid}
host=${upstream%:*}

if [ -z "$host" ] || [ "$interval" = 0 ]; then
    echo "$me: not watching (CALC_UPSTREAM unset or NGINX_RESOLVE_INTERVAL=0)"
    exit 0
fi
case $host in
    *[!0-9.]*) ;;  # a name: watch it
    *) echo "$me: $host is an address; nothing to watch"; exit 0 ;;
esac

# Every IPv4 address of the name, sorted: `ahostsv4` goes through getaddrinfo()
# like nginx does, in glibc and in musl alike (musl's `getent hosts` prints only
# the first address).
addresses() {
    getent ahostsv4 "$host" 2>/dev/null | awk '{ print $1 }' | sort -u | tr '\n' ' ' || true
}

watch() {
    last=$(addresses)
    echo "$me: watching $host every ${interval}s; now: [${last% }]"
    while sleep "$interval"; do
        now=$(addresses)
        [ -n "$now" ] || continue
        [ "$now" != "$last" ] || continue
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        echo "$me: $host changed from [${last% }] to [${now% }]; reloading nginx"
        if kill -HUP "$pid"; then
            last=$now
        fi
    done
}

watch </dev/null &
