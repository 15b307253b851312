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
#
# A reload is not free for clients: nginx's old workers close their idle
# keep-alive connections to clients, and a client that sent a request on one
# at that moment gets no answer; clients retry GETs, not POSTs. So it reloads
# at once only when an address appears that nginx does not know (a new replica,
# or one back at another address). An address that only disappeared (a replica
# restarting, which comes back at the same address within seconds) is waited
# for NGINX_RESOLVE_GRACE seconds first; meanwhile nginx skips it (a refused
# connection goes to the next replica). A rolling restart then reloads nothing.
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
grace=${NGINX_RESOLVE_GRACE:-30}
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

# True when every address in $1 is also in $2 (some left, none came).
only_fewer() {
    for address in $1; do
        case " $2 " in
            *" $address "*) ;;
            *) return 1 ;;
        esac
    done
    return 0
}

watch() {
    last=$(addresses)
    waited=0
    echo "$me: watching $host every ${interval}s (addresses gone for ${grace}s count); now: [${last% }]"
    while sleep "$interval"; do
        now=$(addresses)
        [ -n "$now" ] || continue
        if [ "$now" = "$last" ]; then
            waited=0
            continue
        fi
        if only_fewer "$now" "$last"; then
            waited=$((waited + interval))
            [ "$waited" -ge "$grace" ] || continue
        fi
        pid=$(cat "$pidfile" 2>/dev/null) || continue
        echo "$me: $host changed from [${last% }] to [${now% }]; reloading nginx"
        if kill -HUP "$pid"; then
            last=$now
            waited=0
        fi
    done
}

watch </dev/null &
