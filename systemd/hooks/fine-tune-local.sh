#!/bin/sh
# EXAMPLE visutility hook: fine-tune a model on this host with a local script.
#
# This is a starting point, not a product: copy it, adapt it, and point
# hooks.fine_tune at the copy:
#   install -m 0755 /usr/share/doc/visutility/examples/hooks/fine-tune-local.sh /etc/visutility/hooks/
#   # /etc/visutility/config.toml:
#   [hooks]
#   fine_tune = { command = ["/etc/visutility/hooks/fine-tune-local.sh"], timeout_s = 900 }
#
# What it does: runs $TRAIN_CMD (your training program) on the model's
# directory under $MODEL_ROOT, writing the new model to a fresh
# directory next to it, and swaps it in only if training succeeded; then asks
# the model server to reload, if $RELOAD_CMD is set. A failed or
# killed run (timeout_s) leaves the current model untouched.
#
# Input, from visutility:
#   VISUTILITY_MODEL_ID  VISUTILITY_ACTION (full|fine_tune)  VISUTILITY_POLICY
#   VISUTILITY_REASON    VISUTILITY_JOB_ID   VISUTILITY_ATTEMPT
#   stdin: one JSON object (the decision and the event that caused it)
# Settings, from the hooks' environment: set them in [hooks] env in the config (or
# pass them from the unit's environment with [hooks] pass_env):
#   MODEL_ROOT  default /srv/models; models in <root>/<model id>/current
#   TRAIN_CMD       default /opt/ml/bin/fine-tune; called as
#                          TRAIN --model-id=ID --input DIR --output DIR --decision FILE
#   RELOAD_CMD  optional program run after the swap as RELOAD -- ID
#
# Sandbox: the model root must be writable (ReadWritePaths=/srv/models) and a
# GPU needs DeviceAllow= and friends: see examples/override-example.conf.

set -eu

log() { printf 'fine-tune-local: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

: "${VISUTILITY_MODEL_ID:?not run by visutility}"
: "${VISUTILITY_JOB_ID:?not run by visutility}"
ROOT=${MODEL_ROOT:-/srv/models}
TRAIN=${TRAIN_CMD:-/opt/ml/bin/fine-tune}

[ -x "$TRAIN" ] || die "training program $TRAIN not found or not executable"
# visutility guarantees model ids never start with '.', '/' or '-' and never
# hold '..', so they are safe as a relative path and never read as an option;
# check anyway, it is cheap. Ids still go after `--` or in `--opt=ID` form.
case $VISUTILITY_MODEL_ID in
    /* | .* | -* | *..*) die "refusing model id $VISUTILITY_MODEL_ID" ;;
esac
dir="$ROOT/$VISUTILITY_MODEL_ID"
[ -d "$dir/current" ] || die "no model at $dir/current"
[ -w "$dir" ] || die "$dir is not writable (ReadWritePaths= in the unit?)"

work="$dir/.visutility-$VISUTILITY_JOB_ID-${VISUTILITY_ATTEMPT:-1}"
rm -rf "$work"
mkdir -p "$work/output"
trap 'rm -rf "$work"' EXIT
cat >"$work/decision.json"

log "fine-tuning $VISUTILITY_MODEL_ID (job $VISUTILITY_JOB_ID, policy ${VISUTILITY_POLICY:-?}: ${VISUTILITY_REASON:-})"
"$TRAIN" --model-id="$VISUTILITY_MODEL_ID" --input "$dir/current" \
    --output "$work/output" --decision "$work/decision.json"

# Keep the previous model one generation back, then swap with renames so a
# reader never sees a half-written model.
rm -rf "$dir/previous"
mv "$dir/current" "$dir/previous"
mv "$work/output" "$dir/current"
log "new model in place at $dir/current (previous kept at $dir/previous)"

if [ -n "${RELOAD_CMD:-}" ]; then
    "$RELOAD_CMD" -- "$VISUTILITY_MODEL_ID"
fi
