#!/bin/sh
# EXAMPLE visutility hook: retrain into a new version directory, switch the
# model's `current` symlink to it atomically, and leave a receipt so that
# `visutility rollback MODEL` (with rollback-symlink.sh) can switch back.
#
# This is a starting point, not a product: copy it, adapt it, and point
# hooks.full (or hooks.fine_tune) at the copy:
#   install -m 0755 /usr/share/doc/visutility/examples/hooks/retrain-versioned.sh /etc/visutility/hooks/
#   # /etc/visutility/config.toml:
#   [hooks]
#   full = { command = ["/etc/visutility/hooks/retrain-versioned.sh"], timeout_s = 3600 }
#   rollback = { command = ["/etc/visutility/hooks/rollback-symlink.sh"], timeout_s = 60 }
#
# Layout: <root>/<model id>/versions/<version>/ holds each version, and
# <root>/<model id>/current is a symlink to versions/<version>; the model
# server loads `current`. A new version is named v<job id>.
#
# Input, from visutility: VISUTILITY_MODEL_ID, VISUTILITY_JOB_ID,
#   VISUTILITY_RECEIPT (where to write the receipt), stdin (the decision).
# Settings, from [hooks] env in the config (or [hooks] pass_env):
#   MODEL_ROOT  default /srv/models
#   TRAIN_CMD       default /opt/ml/bin/train; called as
#                          TRAIN --model-id=ID --input DIR --output DIR --decision FILE
#   RELOAD_CMD  optional program run after the switch as RELOAD -- ID

set -eu

log() { printf 'retrain-versioned: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

: "${VISUTILITY_MODEL_ID:?not run by visutility}"
: "${VISUTILITY_JOB_ID:?not run by visutility}"
ROOT=${MODEL_ROOT:-/srv/models}
TRAIN=${TRAIN_CMD:-/opt/ml/bin/train}

[ -x "$TRAIN" ] || die "training program $TRAIN not found or not executable"
case $VISUTILITY_MODEL_ID in
    /* | .* | -* | *..*) die "refusing model id $VISUTILITY_MODEL_ID" ;;
esac
dir="$ROOT/$VISUTILITY_MODEL_ID"
[ -L "$dir/current" ] || die "$dir/current is not a symlink to a version"
previous=$(basename "$(readlink "$dir/current")")
version="v$VISUTILITY_JOB_ID"
new="$dir/versions/$version"

work="$dir/versions/.tmp-$version"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work" "$dir/.current.tmp"' EXIT
cat >"$work.decision.json"
log "training $VISUTILITY_MODEL_ID from $previous into $version"
"$TRAIN" --model-id="$VISUTILITY_MODEL_ID" --input "$dir/current/" \
    --output "$work" --decision "$work.decision.json"
rm -f "$work.decision.json"
rm -rf "$new"
mv "$work" "$new"

# Switch atomically: a new symlink renamed over the old one.
ln -sfn "versions/$version" "$dir/.current.tmp"
mv -T "$dir/.current.tmp" "$dir/current"
log "current -> versions/$version (previous: $previous)"

if [ -n "${VISUTILITY_RECEIPT:-}" ]; then
    printf '{"version":"%s","previous":"%s"}\n' "$version" "$previous" >"$VISUTILITY_RECEIPT"
fi
if [ -n "${RELOAD_CMD:-}" ]; then
    "$RELOAD_CMD" -- "$VISUTILITY_MODEL_ID"
fi
