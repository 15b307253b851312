#!/bin/sh
# Renders the nginx configuration templates, as the official image does:
# $NGINX_ENVSUBST_TEMPLATE_DIR/**/*$NGINX_ENVSUBST_TEMPLATE_SUFFIX (default
# /etc/nginx/templates/**/*.template) become files of the same relative name,
# minus the suffix, in $NGINX_ENVSUBST_OUTPUT_DIR (default /etc/nginx/conf.d).
# Only variables that are set in the environment (and match the optional
# NGINX_ENVSUBST_FILTER regular expression) are replaced, so nginx's own
# $variables survive.
set -eu

me=$(basename "$0")
templates=${NGINX_ENVSUBST_TEMPLATE_DIR:-/etc/nginx/templates}
suffix=${NGINX_ENVSUBST_TEMPLATE_SUFFIX:-.template}
output=${NGINX_ENVSUBST_OUTPUT_DIR:-/etc/nginx/conf.d}

[ -d "$templates" ] || exit 0
if [ ! -w "$output" ]; then
    echo "$me: $output is not writable; templates in $templates not rendered" >&2
    exit 0
fi

names=$(awk -v filter="${NGINX_ENVSUBST_FILTER:-}" 'BEGIN {
    for (name in ENVIRON)
        if (name ~ /^[A-Za-z_][A-Za-z0-9_]*$/ && name ~ filter) printf "${%s} ", name
}')

find "$templates" -follow -type f -name "*$suffix" | sort | while read -r template; do
    relative=${template#"$templates"/}
    target=$output/${relative%"$suffix"}
    mkdir -p "$(dirname "$target")"
    echo "$me: rendering $template into $target"
    envsubst "$names" <"$template" >"$target"
done
