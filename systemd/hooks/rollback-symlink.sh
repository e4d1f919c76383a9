#!/bin/sh
# EXAMPLE visutility rollback hook: switch a model's `current` symlink back to
# the version the retrain's receipt names as `previous` (see
# retrain-versioned.sh, which writes such receipts), then ask the model server
# to reload.
#
#   [hooks]
#   rollback = { command = ["/etc/visutility/hooks/rollback-symlink.sh"], timeout_s = 60 }
#
# Input, from visutility: VISUTILITY_MODEL_ID; stdin: one JSON object with
# `rollback_of` (the retrain's job id) and `receipt` (what it wrote, here
# {"version":"v42","previous":"v41"}).
# Settings: MODEL_ROOT (default /srv/models), RELOAD_CMD.

set -eu

log() { printf 'rollback-symlink: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

: "${VISUTILITY_MODEL_ID:?not run by visutility}"
ROOT=${MODEL_ROOT:-/srv/models}
case $VISUTILITY_MODEL_ID in
    /* | .* | -* | *..*) die "refusing model id $VISUTILITY_MODEL_ID" ;;
esac
dir="$ROOT/$VISUTILITY_MODEL_ID"

# The receipt is the one retrain-versioned.sh wrote: versions are v<digits>.
input=$(cat)
previous=$(printf '%s' "$input" | sed -n 's/.*"receipt":{[^}]*"previous":"\(v[0-9][0-9]*\)".*/\1/p')
[ -n "$previous" ] || die "no previous version in the receipt: $input"
[ -d "$dir/versions/$previous" ] || die "version $previous is gone from $dir/versions"

ln -sfn "versions/$previous" "$dir/.current.tmp"
mv -T "$dir/.current.tmp" "$dir/current"
log "current -> versions/$previous"

if [ -n "${RELOAD_CMD:-}" ]; then
    "$RELOAD_CMD" -- "$VISUTILITY_MODEL_ID"
fi
