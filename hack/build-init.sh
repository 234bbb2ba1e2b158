#!/usr/bin/env bash
# Build fnlet-init, the static PID 1 of every call's container
# (cmd/fnlet-init). The manager finds it beside its own executable, or where
# --init-binary says.
#
#   hack/build-init.sh [OUT]     default OUT: bin/fnlet-init
set -euo pipefail
. "$(dirname "$0")/lib.sh"
out=${1:-$FNLET_ROOT/bin/fnlet-init}
mkdir -p "$(dirname "$out")"
src=$FNLET_ROOT/cmd/fnlet-init/fnlet-init.c
command -v "${CC:-cc}" >/dev/null || die "no C compiler (${CC:-cc}): run hack/install-deps.sh (gcc, libc6-dev)"
# Static: the binary runs inside any image, with or without a libc.
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"${CC:-cc}" -static -Os -s -Wall -Wextra -Werror -o "$tmp" "$src"
chmod 0755 "$tmp"
mv -f "$tmp" "$out"
