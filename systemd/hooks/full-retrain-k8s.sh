#!/bin/sh
# EXAMPLE visutility hook: full retrain as a Kubernetes Job.
#
# This is a starting point, not a product: copy it, adapt the Job template to
# your training image, and point hooks.full at the copy:
#   install -m 0755 /usr/share/doc/visutility/examples/hooks/full-retrain-k8s.sh /etc/visutility/hooks/
#   # /etc/visutility/config.toml:
#   [hooks]
#   full = { command = ["/etc/visutility/hooks/full-retrain-k8s.sh"], timeout_s = 7200 }
#
# What it does: stores the decision JSON (stdin) in a ConfigMap, creates a
# Job that runs the training image with it mounted at /visutility/decision.json,
# waits for the Job to finish and exits 0 only if it succeeded, so the daemon
# resets the model's policies only after a real retrain. If the Job of this
# job id and attempt already exists (the daemon restarted and retries an
# interrupted job), it waits for that one instead of starting another.
#
# Input, from visutility:
#   VISUTILITY_MODEL_ID  VISUTILITY_ACTION (full|fine_tune)  VISUTILITY_POLICY
#   VISUTILITY_REASON    VISUTILITY_JOB_ID   VISUTILITY_ATTEMPT
#   stdin: one JSON object (the decision and the event that caused it)
# Settings, from the hooks' environment: set them in [hooks] env in the config (or
# pass them from the unit's environment with [hooks] pass_env):
#   KUBECONFIG            kubeconfig readable by the visutility user (required)
#   K8S_IMAGE  training image (required)
#   K8S_NAMESPACE   default "ml"
#   K8S_POLL_S      seconds between status checks, default 15
#
# Sandbox: the service allows no network by default. This hook needs
# RestrictAddressFamilies=AF_INET AF_INET6 and IPAddressAllow= for the API
# server (and DNS): see examples/override-example.conf.

set -eu

log() { printf 'full-retrain-k8s: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

: "${VISUTILITY_MODEL_ID:?not run by visutility}"
: "${VISUTILITY_JOB_ID:?not run by visutility}"
ATTEMPT=${VISUTILITY_ATTEMPT:-1}
ACTION=${VISUTILITY_ACTION:-full}
POLICY=${VISUTILITY_POLICY:-}
REASON=${VISUTILITY_REASON:-}
NS=${K8S_NAMESPACE:-ml}
IMAGE=${K8S_IMAGE:?set K8S_IMAGE (Environment= in a drop-in)}
POLL=${K8S_POLL_S:-15}
KUBECTL=${KUBECTL:-kubectl}

command -v "$KUBECTL" >/dev/null 2>&1 || die "kubectl not found"
if [ -z "${KUBECONFIG:-}" ] || [ ! -r "$KUBECONFIG" ]; then
    die "KUBECONFIG unset or unreadable"
fi

# kubectl caches discovery data under $HOME; keep it in the service's cache
# directory (CacheDirectory=visutility) or the private /tmp.
CACHE="${CACHE_DIRECTORY:-${TMPDIR:-/tmp}}/kube-cache"
k() { "$KUBECTL" --namespace "$NS" --cache-dir "$CACHE" "$@"; }

# Kubernetes names: lowercase alphanumerics and '-', at most 63 characters.
# model ids may hold [A-Za-z0-9._:/-]; the exact id goes into an annotation.
slug=$(printf '%s' "$VISUTILITY_MODEL_ID" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '-' | cut -c1-30 | sed 's/^-*//; s/-*$//')
jid=$(printf '%s' "$VISUTILITY_JOB_ID" | tr '[:upper:]' '[:lower:]' | tr -c 'a-z0-9\n' '-' | cut -c1-20)
NAME=$(printf 'vis-%s-%s-%s' "${slug:-model}" "$jid" "$ATTEMPT" | cut -c1-63 | sed 's/-*$//')

# YAML double-quoted scalar: escape backslashes and quotes, drop control characters.
yq() { printf '"%s"' "$(printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

if k get job "$NAME" >/dev/null 2>&1; then
    log "job $NAME exists already (retry of an interrupted run): waiting for it"
else
    decision=$(mktemp)
    trap 'rm -f "$decision"' EXIT
    cat >"$decision"
    k create configmap "$NAME" --from-file=decision.json="$decision" >/dev/null
    k create -f - >/dev/null <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: $NAME
  labels:
    app.kubernetes.io/managed-by: visutility
    visutility/model: $(yq "$slug")
  annotations:
    visutility/model-id: $(yq "$VISUTILITY_MODEL_ID")
    visutility/job-id: $(yq "$VISUTILITY_JOB_ID")
    visutility/policy: $(yq "$POLICY")
    visutility/reason: $(yq "$REASON")
spec:
  backoffLimit: 0                 # visutility does the retrying (hooks.retries)
  ttlSecondsAfterFinished: 86400
  template:
    metadata:
      labels:
        app.kubernetes.io/managed-by: visutility
    spec:
      restartPolicy: Never
      containers:
        - name: train
          image: $(yq "$IMAGE")
          args: ["--model-id", $(yq "$VISUTILITY_MODEL_ID"), "--mode", $(yq "$ACTION"), "--decision", "/visutility/decision.json"]
          env:
            - name: VISUTILITY_MODEL_ID
              value: $(yq "$VISUTILITY_MODEL_ID")
            - name: VISUTILITY_REASON
              value: $(yq "$REASON")
          volumeMounts:
            - name: decision
              mountPath: /visutility
              readOnly: true
      volumes:
        - name: decision
          configMap:
            name: $NAME
EOF
    log "submitted job $NAME in namespace $NS for model $VISUTILITY_MODEL_ID"
fi

# Wait for the outcome. If visutility's timeout_s runs out, it kills this
# script; the Job keeps running in the cluster and is left to its TTL.
while :; do
    status=$(k get job "$NAME" -o 'jsonpath={.status.succeeded}/{.status.failed}') || status="?/?"
    case $status in
        [1-9]*/*)
            log "job $NAME succeeded"
            k delete configmap "$NAME" --ignore-not-found >/dev/null 2>&1 || true
            exit 0 ;;
        */[1-9]*)
            log "job $NAME failed; see: kubectl -n $NS logs job/$NAME"
            k delete configmap "$NAME" --ignore-not-found >/dev/null 2>&1 || true
            exit 1 ;;
    esac
    sleep "$POLL"
done
