#!/usr/bin/env bash
# Checks the Helm chart charts/vehicle-connect:
#   1. builds helm if needed (scripts/build-helm.sh, cached);
#   2. the chart's files/crds/ are exact copies of the generated crds/ (scripts/sync-chart-crds.sh),
#      and its README.md documents values.yaml as scripts/chart-readme.py generates it;
#   3. `helm lint --strict` with the default values, with every optional feature on
#      (charts/vehicle-connect/ci/all-features-values.yaml) and with three replicas on NATS
#      JetStream (ci/jetstream-values.yaml);
#   4. `helm template` of several value sets, with checks of what each must (not) render,
#      and values that values.schema.json must refuse;
#   5. only when VC_KUBECONFIG points at a running API server: applies the CRDs as the chart
#      renders them (refusing any warning of the API server about them), then
#      `kubectl apply --dry-run=server` of the rendered manifests (default values, all
#      features on with the ServiceMonitor only if its CRD is installed there, three replicas
#      on JetStream), and a JetStream release scaled from one replica to three as an upgrade;
#
#   scripts/check-chart.sh
#   VC_KUBECONFIG=.local/kubeconfig scripts/check-chart.sh
#
# Env: VC_KUBECONFIG (optional), VC_CHART_NAMESPACE (release namespace for the server dry
# run, default "default"; it must exist).
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=charts/vehicle-connect
ALL="$CHART/ci/all-features-values.yaml"
JS="$CHART/ci/jetstream-values.yaml"
log() { echo "[check-chart] $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

HELM="$(scripts/build-helm.sh)"
log "helm: $("$HELM" version --short)"
OUTDIR="$(mktemp -d "${TMPDIR:-/tmp}/vc-chart-check.XXXXXX")"
trap 'rm -rf "$OUTDIR"' EXIT

# --- 2. CRDs ------------------------------------------------------------------------------
scripts/sync-chart-crds.sh --check
python3 scripts/chart-readme.py --check

# --- 3. lint ------------------------------------------------------------------------------
log "helm lint --strict (default values)"
"$HELM" lint --strict "$CHART" >&2
log "helm lint --strict (every optional feature on)"
"$HELM" lint --strict "$CHART" -f "$ALL" >&2
log "helm lint --strict (three replicas on JetStream)"
"$HELM" lint --strict "$CHART" -f "$JS" >&2

# --- 4. template --------------------------------------------------------------------------
render() { # name, helm template args...
  local name="$1"; shift
  "$HELM" template vehicle-connect "$CHART" --namespace vehicle-connect "$@" >"$OUTDIR/$name.yaml" \
    || die "helm template ($name) failed"
  log "rendered $name: $(grep -c '^kind:' "$OUTDIR/$name.yaml") objects ($(grep '^kind:' "$OUTDIR/$name.yaml" | awk '{print $2}' | sort | paste -sd, -))"
}
has() { grep -qE -- "$2" "$OUTDIR/$1.yaml" || die "$1: expected /$2/"; }
# The decoded token file ("tokens" key) of the Secret named $2 in rendering $1.
secret_tokens() {
  awk -v name="$2" '/^---/{f=0} $0 == "  name: " name {f=1} f && /^  tokens: /{print; exit}' "$OUTDIR/$1.yaml" \
    | cut -d'"' -f2 | base64 -d
}
hasnt() { ! grep -qE -- "$2" "$OUTDIR/$1.yaml" || die "$1: did not expect /$2/"; }

render default
for k in ServiceAccount ClusterRole ClusterRoleBinding Service StatefulSet CustomResourceDefinition; do has default "^kind: $k\$"; done
# The CRDs are templates (so upgrades update them), kept on uninstall by default.
count() { grep -cE -- "$2" "$OUTDIR/$1.yaml" || true; }
[[ "$(count default '^kind: CustomResourceDefinition$')" == "$(ls "$CHART"/files/crds/*.yaml | wc -l)" ]] \
  || die "default: not every CRD of files/crds rendered"
[[ "$(count default '^    helm.sh/resource-policy: keep$')" == "$(count default '^kind: CustomResourceDefinition$')" ]] \
  || die "default: a CRD lacks helm.sh/resource-policy: keep"
has default '^  name: webhooksubscriptions.connect.vehicles.io$'
# Two Services: the API, and the StatefulSet's headless governing one.
[[ "$(count default '^kind: Service$')" == 2 ]] || die "default: expected 2 Services"
has default '^  name: vehicle-connect-headless$'
has default '^  clusterIP: None$'
has default '^  serviceName: vehicle-connect-headless$'
has default 'image: "vehicle-connect:0.1.0"$'
for k in Secret ServiceMonitor PrometheusRule ConfigMap NetworkPolicy; do hasnt default "^kind: $k\$"; done
has default 'replicas: 1$'
has default 'volumeClaimTemplates:'
has default 'fieldPath: metadata.name'
has default 'runAsNonRoot: true'
has default 'readOnlyRootFilesystem: true'
has default 'allowPrivilegeEscalation: false'
has default '- ALL$'
has default 'type: RuntimeDefault'
has default 'path: /healthz'
has default 'path: /readyz'
has default 'name: http$'
hasnt default 'VC_INGEST_TOKEN_FILE'
hasnt default 'VC_FEED_TOKEN_FILE'
# Least privilege: no wildcard; only get/list/watch/patch, plus create on events alone.
hasnt default '(verbs|resources|apiGroups): \[.*"\*"'
verbs="$(grep -oE '^    verbs: \[.*\]' "$OUTDIR/default.yaml" | grep -oE '"[a-z]+"' | sort -u | paste -sd, -)"
[[ "$verbs" == '"create","get","list","patch","watch"' ]] || die "default: ClusterRole verbs are $verbs"
[[ "$(grep -c '"create"' "$OUTDIR/default.yaml")" == 1 ]] || die "default: create granted beyond events"
grep -B1 'verbs: \["create", "patch"\]' "$OUTDIR/default.yaml" | grep -q 'resources: \["events"\]' \
  || die "default: create must be on events only"
hasnt default '^kind: Role$'

render all -f "$ALL"
# Self-service writes: in the ClusterRole when no namespaces are listed (all features on)...
grep -A1 'resources: \["webhooksubscriptions", "ftpconnections", "apiconnections"\]$' "$OUTDIR/all.yaml" \
  | grep -q 'verbs: \["create", "update", "delete"\]' || die "all: self-service writes not granted"
hasnt all '^kind: Role$'
# ...else a Role (and RoleBinding) in each listed namespace, and nothing cluster-wide.
render selfservice --set rbac.selfService.enabled=true --set 'rbac.selfService.namespaces={dealer-1-self,dealer-2-self}'
[[ "$(count selfservice '^kind: Role$')" == 2 && "$(count selfservice '^kind: RoleBinding$')" == 2 ]] \
  || die "selfservice: expected a Role and RoleBinding per listed namespace"
has selfservice '^  namespace: dealer-1-self$'
has selfservice '^  namespace: dealer-2-self$'
[[ "$(count selfservice 'verbs: \["create", "update", "delete"\]')" == 2 ]] \
  || die "selfservice: self-service writes granted beyond the two Roles"
for k in Secret ServiceMonitor PrometheusRule ConfigMap NetworkPolicy; do has all "^kind: $k\$"; done
has all 'alert: VehicleConnectResourceNotReady$'
has all 'vehicle_connect_queue_depth > 500$'
has all '"title": "vehicle-connect",$'
has all 'grafana_dashboard: "1"$'
# image.digest replaces the tag.
has all 'image: "registry.example.com/platform/vehicle-connect@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"$'
hasnt all '0\.1\.0-test'
# commonLabels: on every object's own labels (CRDs included), and on the pod.
objects="$(count all '^kind:')"
[[ "$(count all '^    example.com/cost-center: ops-1$')" == "$objects" ]] \
  || die "all: commonLabels on $(count all '^    example.com/cost-center: ops-1$') of $objects objects"
has all '^        example.com/cost-center: ops-1$'
# Not in the StatefulSet's selector, which cannot change after install.
awk '/^  selector:/{f=1;next} f&&/^  [a-z]/{f=0} f' "$OUTDIR/all.yaml" | grep -q cost-center \
  && die "all: commonLabels reached a selector"
# extraVolumes / extraVolumeMounts.
# (toYaml sorts keys: the name comes last.)
grep -B1 '^          name: ca-bundle$' "$OUTDIR/all.yaml" | grep -q '^            name: corporate-ca$' \
  || die "all: extraVolumes not rendered"
grep -A1 '^            - mountPath: /etc/ssl/corporate$' "$OUTDIR/all.yaml" | grep -q '^              name: ca-bundle$' \
  || die "all: extraVolumeMounts not rendered"
# ServiceMonitor: relabelings, metricRelabelings, and never the headless Service.
grep -A3 '^      relabelings:$' "$OUTDIR/all.yaml" | grep -q 'replacement: check-chart$' || die "all: relabelings not rendered"
grep -A4 '^      metricRelabelings:$' "$OUTDIR/all.yaml" | grep -q 'action: drop$' || die "all: metricRelabelings not rendered"
grep -A2 'key: connect.vehicles.io/headless$' "$OUTDIR/all.yaml" | grep -q 'operator: DoesNotExist$' \
  || die "all: the ServiceMonitor would select the headless Service"
has all 'name: VC_INGEST_TOKEN_FILE'
has all 'value: /etc/vehicle-connect/ingest-tokens/tokens$'
has all 'secretName: vehicle-connect-vc-ingest-tokens$'
# Feed tokens: their own Secret, file and mount, never the ingest ones.
has all 'name: VC_FEED_TOKEN_FILE'
has all 'value: /etc/vehicle-connect/feed-tokens/tokens$'
has all 'secretName: vehicle-connect-vc-feed-tokens$'
has all 'mountPath: /etc/vehicle-connect/feed-tokens$'
feed_secret="$(secret_tokens all vehicle-connect-vc-feed-tokens)"
grep -qx 'check-chart-feed-token-dealer-1-0123 dealer-1' <<<"$feed_secret" || die "all: feed token line not rendered"
grep -qx 'check-chart-feed-token-platform-0123 \*' <<<"$feed_secret" || die "all: any-client feed token not rendered"
has all 'value: /etc/vehicle-connect/manage-tokens/tokens$'
has all 'value: "https://platform.example/ops-signals"$'
has all 'value: /etc/vehicle-connect/ops-webhook/whsec$'
has all 'secretName: platform-ops-webhook$'
has all 'name: VC_DELIVERY_LOG_MAX_ENTRIES$'
has all 'secretName: vehicle-connect-vc-manage-tokens$'
manage_secret="$(secret_tokens all vehicle-connect-vc-manage-tokens)"
grep -qx 'check-chart-manage-token-dealer-1-0123 dealer-1' <<<"$manage_secret" || die "all: manage token line not rendered"
grep -qx 'check-chart-manage-token-platform-0123 \*' <<<"$manage_secret" || die "all: platform manage token not rendered"
! grep -q 'check-chart-token-0123456789abcdef' <<<"$feed_secret" || die "all: an ingest token is in the feed tokens"
has all 'value: "10.20.0.0/16,192.168.1.10"'
has all 'name: VC_MAX_BODY_BYTES'
has all 'name: VC_MAX_CONCURRENT_INGEST'
has all 'name: VC_MAX_PENDING_DELIVERIES'
has all 'name: VC_MAX_LOADED_DELIVERIES'
has all 'name: VC_MAX_ACTIVE_LANES'
hasnt default 'VC_MAX_LOADED_DELIVERIES'
has all 'value: "connect.vehicles.io/credential=true"'
has all 'name: VC_WATCH_LABEL_SELECTOR'
has all 'value: "connect.vehicles.io/shard=a"'
hasnt default 'VC_WATCH_LABEL_SELECTOR'
# Tokens bound to clients render as `<token> <client>,<client>` lines.
secret_tokens all vehicle-connect-vc-ingest-tokens \
  | grep -qx 'check-chart-dealer-token-0123456789 dealer-1,dealer-2' || die "all: bound token line not rendered"
has all 'value: "0.0.0.0:8080"'
has all 'storageClassName: "fast-ssd"'
has all 'ReadWriteOncePod'
has all 'port: 80$'
has all 'connect.vehicles.io/ingest: "true"'
has all 'egress:'

render existing -f "$ALL" --set ingestTokenSecret.existingSecret=my-tokens --set ingestTokenSecret.key=tokens.txt \
  --set feedTokenSecret.existingSecret=my-feed-tokens --set feedTokenSecret.key=feed.txt \
  --set manageTokenSecret.existingSecret=my-manage-tokens --set manageTokenSecret.key=manage.txt
hasnt existing '^kind: Secret$'
has existing 'secretName: my-manage-tokens$'
has existing 'value: /etc/vehicle-connect/manage-tokens/manage.txt$'
has existing 'secretName: my-tokens$'
has existing 'value: /etc/vehicle-connect/ingest-tokens/tokens.txt$'
has existing 'secretName: my-feed-tokens$'
has existing 'value: /etc/vehicle-connect/feed-tokens/feed.txt$'

render nocrds --set crds.enabled=false
hasnt nocrds '^kind: CustomResourceDefinition$'
hasnt nocrds 'resource-policy'
render crdsnokeep --set crds.keep=false
has crdsnokeep '^kind: CustomResourceDefinition$'
hasnt crdsnokeep 'helm.sh/resource-policy'

render ephemeral --set persistence.enabled=false
hasnt ephemeral 'volumeClaimTemplates:'
has ephemeral 'emptyDir: \{\}'

# Several replicas on NATS JetStream: the URL, replica id, partitions and the Secrets'
# files in the env, a PodDisruptionBudget, a preferred anti-affinity on the node, pods
# started together, and still a claim per pod. The default render has none of it.
render jetstream -f "$JS"
has jetstream '^kind: PodDisruptionBudget$'
has jetstream '^apiVersion: policy/v1$'
has jetstream '^  maxUnavailable: 1$'
has jetstream '^  replicas: 3$'
has jetstream '^  podManagementPolicy: Parallel$'
has jetstream 'volumeClaimTemplates:'
has jetstream 'value: "nats://nats.nats.svc:4222"$'
grep -A3 'name: VC_REPLICA_ID$' "$OUTDIR/jetstream.yaml" | grep -q 'fieldPath: metadata.name$' \
  || die "jetstream: VC_REPLICA_ID is not the pod's name"
env_value() { # rendering, env name: the value line after it
  grep -A1 -- "- name: $2\$" "$OUTDIR/$1.yaml" | sed -n 's/^ *value: //p'
}
for kv in 'VC_STORE "nats://nats.nats.svc:4222"' 'VC_NATS_REPLICAS "3"' 'VC_PARTITIONS "32"' \
  'VC_PARTITION_LEASE_SECONDS "15"' \
  'VC_NATS_CREDENTIALS_FILE /etc/vehicle-connect/nats-credentials/operator.creds' \
  'VC_NATS_TLS_CA_FILE /etc/vehicle-connect/nats-tls/ca.crt' \
  'VC_NATS_TLS_CERT_FILE /etc/vehicle-connect/nats-tls/tls.crt' \
  'VC_NATS_TLS_KEY_FILE /etc/vehicle-connect/nats-tls/tls.key'; do
  [[ "$(env_value jetstream "${kv%% *}")" == "${kv#* }" ]] \
    || die "jetstream: ${kv%% *} is '$(env_value jetstream "${kv%% *}")', expected ${kv#* }"
done
has jetstream 'secretName: vehicle-connect-nats-creds$'
has jetstream 'secretName: vehicle-connect-nats-tls$'
has jetstream 'mountPath: /etc/vehicle-connect/nats-credentials$'
has jetstream 'mountPath: /etc/vehicle-connect/nats-tls$'
[[ "$(grep -A1 'mountPath: /etc/vehicle-connect/nats-' "$OUTDIR/jetstream.yaml" | grep -c 'readOnly: true$')" == 2 ]] \
  || die "jetstream: the NATS Secrets are not mounted read-only"
grep -A8 '^        podAntiAffinity:$' "$OUTDIR/jetstream.yaml" | grep -q 'topologyKey: kubernetes.io/hostname$' \
  || die "jetstream: no anti-affinity on the node"
for x in PodDisruptionBudget VC_STORE VC_REPLICA_ID VC_NATS_ podAntiAffinity 'podManagementPolicy: Parallel'; do
  hasnt default "$x"
done
has default '^  podManagementPolicy: OrderedReady$'
# One replica on JetStream: no PodDisruptionBudget (it would block every drain), but the
# same podManagementPolicy, which cannot change after install: scaling up is an upgrade.
render jetstream1 -f "$JS" --set replicas=1
hasnt jetstream1 '^kind: PodDisruptionBudget$'
has jetstream1 '^  podManagementPolicy: Parallel$'
render jetstreamnopdb -f "$JS" --set podDisruptionBudget.enabled=false
hasnt jetstreamnopdb '^kind: PodDisruptionBudget$'
render jetstreampct -f "$JS" --set podDisruptionBudget.maxUnavailable=50%
has jetstreampct '^  maxUnavailable: 50%$'
# Credentials and TLS are optional; a CA alone is TLS without a client certificate.
render jetstreamplain -f "$JS" --set store.nats.credentialsSecret.name= \
  --set store.nats.tlsSecret.certKey= --set store.nats.tlsSecret.keyKey=
for x in VC_NATS_CREDENTIALS_FILE VC_NATS_TLS_CERT_FILE VC_NATS_TLS_KEY_FILE nats-credentials; do
  hasnt jetstreamplain "$x"
done
has jetstreamplain 'name: VC_NATS_TLS_CA_FILE$'
# affinity: the anti-affinity is added to the user's rules, and replaced by their own.
render jetstreamall -f "$ALL" -f "$JS"
grep -A12 '^      affinity:$' "$OUTDIR/jetstreamall.yaml" | grep -q 'node-role.example.com/operators' \
  || die "jetstreamall: affinity's nodeAffinity lost"
has jetstreamall 'topologyKey: kubernetes.io/hostname$'
render jetstreamnoanti -f "$JS" --set-json 'affinity={"podAntiAffinity":{}}'
hasnt jetstreamnoanti 'topologyKey'

render norbac --set rbac.create=false --set serviceAccount.create=false --set serviceAccount.name=ops
for k in ServiceAccount ClusterRole ClusterRoleBinding; do hasnt norbac "^kind: $k\$"; done
has norbac 'serviceAccountName: ops$'

# values.schema.json must refuse these.
refuse() { # description, helm args...
  local what="$1"; shift
  if "$HELM" template vehicle-connect "$CHART" "$@" >/dev/null 2>"$OUTDIR/err"; then
    die "schema accepted $what"
  fi
  grep -qiE 'schema|values don.t meet' "$OUTDIR/err" || { cat "$OUTDIR/err" >&2; die "$what failed, but not by the schema"; }
  log "schema refuses $what"
}
refuse "an unknown top-level key" --set replicaCount=2
refuse "a bad pullPolicy" --set image.pullPolicy=Sometimes
refuse "a short ingest token" --set 'ingestTokens[0]=short'
refuse "a client that is not a clientId" --set 'ingestTokens[0].token=long-enough-token-0123' --set 'ingestTokens[0].clients[0]=a b'
refuse "a feed token without clients" --set 'feedTokens[0]=long-enough-feed-token-0123'
refuse "an ops webhook URL that is not http(s)" --set opsWebhook.url=ftp://x
refuse "a manage token without clients" --set 'manageTokens[0].token=long-enough-manage-token-0123'
refuse "a feed client that is not a clientId" --set 'feedTokens[0].token=long-enough-token-0123' --set 'feedTokens[0].clients[0]=a/b'
refuse "a bad log format" --set operator.logFormat=xml
refuse "a bad CIDR" --set 'operator.allowTargets[0]=not a cidr'
refuse "a bad port" --set service.port=70000
refuse "a digest that is not sha256:<64 hex>" --set image.digest=latest
refuse "crds.enabled that is not a boolean" --set crds.enabled=maybe
refuse "an extra volume mount without mountPath" --set 'extraVolumeMounts[0].name=x'
refuse "a commonLabels value that is not a string" --set-json 'commonLabels={"a":{"b":1}}'
refuse "a self-service namespace that is not a namespace name" --set 'rbac.selfService.namespaces[0]=Dealer 1'
# Several replicas only on JetStream: the embedded store has one writer. The refusal names
# both ways out (at most one replica, or a NATS URL).
refuse "replicas: 2 on the embedded store" --set replicas=2
grep -qF "at '/replicas': maximum: got 2, want 1" "$OUTDIR/err" \
  && grep -qF "at '/store/nats/url': minLength: got 0, want 1" "$OUTDIR/err" \
  || { cat "$OUTDIR/err" >&2; die "replicas: 2 on the embedded store refused without naming replicas and store.nats.url"; }
refuse "a NATS URL that is not nats:// or tls://" --set store.nats.url=http://nats:4222
refuse "a NATS URL list with a bad entry" --set 'store.nats.url=nats://a:4222\,b:4222'
refuse "a NATS client certificate without its key" --set store.nats.tlsSecret.name=t --set store.nats.tlsSecret.keyKey=
refuse "streamReplicas above JetStream's 5" -f "$JS" --set store.nats.streamReplicas=7
refuse "no partitions" -f "$JS" --set store.partitions=0
refuse "a PodDisruptionBudget allowing no disruption" -f "$JS" --set podDisruptionBudget.maxUnavailable=0
refuse "a credentials Secret that is not a Secret name" -f "$JS" --set store.nats.credentialsSecret.name=Nats_Creds

# --- 5. server dry run --------------------------------------------------------------------
if [[ -z "${VC_KUBECONFIG:-}" ]]; then
  log "VC_KUBECONFIG not set: skipping the server-side dry run"
  log "OK"
  exit 0
fi
command -v kubectl >/dev/null 2>&1 || die "kubectl is not on PATH (needed with VC_KUBECONFIG)"
K=(kubectl --kubeconfig "$VC_KUBECONFIG")
"${K[@]}" get --raw /readyz >/dev/null || die "API server of $VC_KUBECONFIG is not reachable"

# Our own throwaway namespace, enforcing the "restricted" Pod Security Standard, so the API
# server itself judges the pod template (it warns about a StatefulSet that would violate it).
cleanup_cluster=()
cleanup() {
  local c
  for c in "${cleanup_cluster[@]}"; do eval "$c" >/dev/null 2>&1 || true; done
  rm -rf "$OUTDIR"
}
trap cleanup EXIT
if [[ -n "${VC_CHART_NAMESPACE:-}" ]]; then
  NS="$VC_CHART_NAMESPACE"
  "${K[@]}" get namespace "$NS" >/dev/null || die "namespace $NS does not exist (VC_CHART_NAMESPACE)"
else
  NS="vc-chart-check-$(date +%s)-$RANDOM"
  "${K[@]}" create namespace "$NS" >/dev/null
  # --wait=false: a bare control plane has no namespace controller to finish the deletion.
  cleanup_cluster+=("${K[*]} delete namespace $NS --wait=false")
  "${K[@]}" label namespace "$NS" pod-security.kubernetes.io/enforce=restricted \
    pod-security.kubernetes.io/warn=restricted >/dev/null
  log "namespace $NS (Pod Security: restricted) for the dry run"
fi

# The CRDs as the chart renders them (not the files): the template's YAML round trip must
# keep them valid. Any warning (e.g. "unrecognized format") fails the check.
log "applying the chart's rendered CRDs to the server"
"$HELM" template vehicle-connect "$CHART" --namespace "$NS" --show-only templates/crds.yaml >"$OUTDIR/crds.yaml"
"${K[@]}" apply --server-side --force-conflicts -f "$OUTDIR/crds.yaml" >"$OUTDIR/crds.out" 2>&1 \
  || { cat "$OUTDIR/crds.out" >&2; die "the API server refused the rendered CRDs"; }
cat "$OUTDIR/crds.out" >&2
! grep -qi 'warning' "$OUTDIR/crds.out" || die "the API server warned about the CRDs"
"${K[@]}" wait --for=condition=Established --timeout=60s -f "$OUTDIR/crds.yaml" >&2

extra=()
if "${K[@]}" get crd servicemonitors.monitoring.coreos.com >/dev/null 2>&1; then
  log "ServiceMonitor CRD present: dry run includes the ServiceMonitor"
else
  log "ServiceMonitor CRD (monitoring.coreos.com) absent on this server: dry run renders without it"
  extra=(--set metrics.serviceMonitor.enabled=false)
fi
if ! "${K[@]}" get crd prometheusrules.monitoring.coreos.com >/dev/null 2>&1; then
  log "PrometheusRule CRD absent on this server: dry run renders without it"
  extra+=(--set prometheusRule.enabled=false)
fi
for set in default all jetstream; do
  args=()
  [[ "$set" == all ]] && args=(-f "$ALL" "${extra[@]}")
  [[ "$set" == jetstream ]] && args=(-f "$JS")
  "$HELM" template vehicle-connect "$CHART" --namespace "$NS" "${args[@]}" >"$OUTDIR/server-$set.yaml"
  log "kubectl apply --dry-run=server ($set values, namespace $NS)"
  "${K[@]}" apply --dry-run=server -f "$OUTDIR/server-$set.yaml" >"$OUTDIR/server-$set.out" 2>&1 \
    || { cat "$OUTDIR/server-$set.out" >&2; die "the API server refused the $set manifests"; }
  cat "$OUTDIR/server-$set.out" >&2
  ! grep -q 'would violate PodSecurity' "$OUTDIR/server-$set.out" \
    || die "the $set pod template violates the restricted Pod Security Standard"
done
# The rendering of three replicas the API server accepted holds its PodDisruptionBudget.
grep -q '^poddisruptionbudget.policy/.* (server dry run)$' "$OUTDIR/server-jetstream.out" \
  || die "the jetstream dry run did not include the PodDisruptionBudget"

# Scaling a JetStream release from one replica to three is an upgrade the API server takes
# (podManagementPolicy, which it refuses to change, follows the store, not the replicas):
# the one-replica StatefulSet is created for real, then the three-replica one dry-run over
# it. Going from the embedded store to JetStream changes it, and is refused.
"$HELM" template vehicle-connect "$CHART" --namespace "$NS" -f "$JS" --set replicas=1 \
  --show-only templates/statefulset.yaml >"$OUTDIR/sts-1.yaml"
"${K[@]}" apply -f "$OUTDIR/sts-1.yaml" >&2
cleanup_cluster=("${K[*]} delete -f $OUTDIR/sts-1.yaml --wait=false" "${cleanup_cluster[@]}")
"$HELM" template vehicle-connect "$CHART" --namespace "$NS" -f "$JS" \
  --show-only templates/statefulset.yaml >"$OUTDIR/sts-3.yaml"
log "kubectl apply --dry-run=server (a JetStream release scaled from 1 replica to 3)"
"${K[@]}" apply --dry-run=server -f "$OUTDIR/sts-3.yaml" >"$OUTDIR/sts-3.out" 2>&1 \
  || { cat "$OUTDIR/sts-3.out" >&2; die "the API server refused scaling the JetStream release to 3 replicas"; }
"$HELM" template vehicle-connect "$CHART" --namespace "$NS" --show-only templates/statefulset.yaml \
  >"$OUTDIR/sts-embedded.yaml"
if "${K[@]}" apply --dry-run=server -f "$OUTDIR/sts-embedded.yaml" >"$OUTDIR/sts-embedded.out" 2>&1; then
  die "the API server let an installed StatefulSet change its podManagementPolicy"
fi
grep -q 'Forbidden: updates to statefulset spec' "$OUTDIR/sts-embedded.out" \
  || { cat "$OUTDIR/sts-embedded.out" >&2; die "changing the store was refused for another reason"; }
log "scaling a JetStream release 1 -> 3 passes; changing the store of an installed release is refused (docs/operations.md)"

# --- 6. the operator under the chart's RBAC (optional) ------------------------------------
# With VC_OPERATOR_BIN (a built vehicle-connect binary), the chart's ServiceAccount,
# ClusterRole and ClusterRoleBinding are created for real, and the operator runs on this
# machine with that ServiceAccount's token: it must reconcile a WebhookSubscription to
# Ready, accept an event, publish Events and remove its finalizer, with no "forbidden".
# It serves only the resources labelled for this run (VC_WATCH_LABEL_SELECTOR), so other
# operators and resources on the cluster neither see nor are touched by it; still, run it
# on a throwaway or development control plane (it creates cluster-wide RBAC objects).
if [[ -z "${VC_OPERATOR_BIN:-}" ]]; then
  log "VC_OPERATOR_BIN not set: skipping the run of the operator under the chart's RBAC"
  log "OK (with server dry run against $VC_KUBECONFIG)"
  exit 0
fi
[[ -x "$VC_OPERATOR_BIN" ]] || die "VC_OPERATOR_BIN=$VC_OPERATOR_BIN is not executable"
[[ -z "${VC_CHART_NAMESPACE:-}" ]] || die "VC_OPERATOR_BIN needs the check's own namespace (unset VC_CHART_NAMESPACE)"
REL="vc-check-$RANDOM"
SHARD_LABEL="connect.vehicles.io/check-chart"
"$HELM" template "$REL" "$CHART" --namespace "$NS" --show-only templates/serviceaccount.yaml \
  --show-only templates/rbac.yaml >"$OUTDIR/rbac.yaml"
"${K[@]}" apply -f "$OUTDIR/rbac.yaml" >&2
cleanup_cluster=("${K[*]} delete -f $OUTDIR/rbac.yaml --wait=false" "${cleanup_cluster[@]}")
SA="$REL-vehicle-connect"
token="$("${K[@]}" -n "$NS" create token "$SA" --duration=10m)"
server="$("${K[@]}" config view --raw --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$("${K[@]}" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
cat >"$OUTDIR/sa-kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: sa, user: {token: "$token"}}]
contexts: [{name: sa, context: {cluster: c, user: sa}}]
current-context: sa
KC
log "running $VC_OPERATOR_BIN as system:serviceaccount:$NS:$SA"
port=""
for _ in $(seq 50); do
  p=$(( 20000 + RANDOM % 20000 ))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[[ -n "$port" ]] || die "no free loopback port"
mkdir -p "$OUTDIR/data"
echo "check-chart-ingest-token-0123456789" >"$OUTDIR/tokens"
KUBECONFIG="$OUTDIR/sa-kubeconfig" POD_NAME="$REL-0" VC_WATCH_LABEL_SELECTOR="$SHARD_LABEL=$REL" \
  "$VC_OPERATOR_BIN" run \
  --listen "127.0.0.1:$port" --data-dir "$OUTDIR/data" --ingest-token-file "$OUTDIR/tokens" \
  --allow-targets 127.0.0.0/8 --log-format text >"$OUTDIR/operator.log" 2>&1 &
op=$!
cleanup_cluster=("kill $op" "${cleanup_cluster[@]}")
for _ in $(seq 60); do curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$OUTDIR/operator.log" >&2; die "operator not ready"; }

"${K[@]}" annotate namespace "$NS" connect.vehicles.io/clients=check-client --overwrite >/dev/null
"${K[@]}" apply -f - >&2 <<CR
apiVersion: connect.vehicles.io/v1alpha1
kind: WebhookSubscription
metadata: {name: check, namespace: $NS, labels: {$SHARD_LABEL: $REL}}
spec:
  url: http://127.0.0.1:9/hook
  clientId: check-client
  events: [vehicle.processed]
---
apiVersion: connect.vehicles.io/v1alpha1
kind: WebhookSubscription
metadata: {name: check-not-allowed, namespace: $NS, labels: {$SHARD_LABEL: $REL}}
spec:
  url: http://127.0.0.1:9/hook
  clientId: some-other-client
  events: [vehicle.processed]
---
apiVersion: connect.vehicles.io/v1alpha1
kind: WebhookSubscription
metadata: {name: check-unlabelled, namespace: $NS}
spec:
  url: http://127.0.0.1:9/hook
  clientId: check-client
  events: [vehicle.processed]
CR
"${K[@]}" -n "$NS" wait --for=condition=Ready --timeout=60s webhooksubscription/check >&2 \
  || { cat "$OUTDIR/operator.log" >&2; die "WebhookSubscription did not become Ready"; }
"${K[@]}" -n "$NS" wait --for=jsonpath='{.status.conditions[?(@.type=="Ready")].reason}'=ClientNotAllowed \
  --timeout=60s webhooksubscription/check-not-allowed >&2 \
  || { cat "$OUTDIR/operator.log" >&2; die "a not-allowed client was not reported as ClientNotAllowed"; }
# Reconciled together with the two above, had the selector not kept it out.
served="$("${K[@]}" -n "$NS" get webhooksubscription check-unlabelled -o jsonpath='{.status}{.metadata.finalizers}')"
[[ -z "$served" ]] || die "the operator served a resource outside VC_WATCH_LABEL_SELECTOR: $served"
code="$(curl -sS -o "$OUTDIR/post.out" -w '%{http_code}' -X POST "http://127.0.0.1:$port/v1/events" \
  -H "Authorization: Bearer check-chart-ingest-token-0123456789" -H 'Content-Type: application/json' \
  -d '{"id":"evt_check_chart_1","type":"vehicle.processed","timestamp":"2026-01-01T10:00:00Z","clientId":"check-client","data":{"vehicle":{"id":"veh-1","vin":"WVWZZZ1JZXW000001"}}}')"
[[ "$code" == 202 ]] || { cat "$OUTDIR/post.out" >&2; die "POST /v1/events answered $code"; }
for _ in $(seq 30); do
  n="$("${K[@]}" -n "$NS" get events.events.k8s.io --no-headers \
        -o custom-columns=C:.reportingController 2>/dev/null | grep -c vehicle-connect || true)"
  [[ "$n" -gt 0 ]] && break; sleep 1
done
[[ "$n" -gt 0 ]] || die "the operator published no Event"
"${K[@]}" -n "$NS" delete webhooksubscriptions --all --timeout=60s >&2 \
  || { cat "$OUTDIR/operator.log" >&2; die "deleting the resources did not finish"; }
# kube-rs prints a refused request as `reason: "Forbidden", code: 403`; a bare
# `403` would also match uids and namespace names (a uid with "4033" failed CI).
DENIED='forbidden|code: 403\b'
if grep -qiE "$DENIED" "$OUTDIR/operator.log"; then
  grep -iE "$DENIED" "$OUTDIR/operator.log" | head -5 >&2
  die "the operator hit a permission the chart's ClusterRole does not grant"
fi
log "operator under the chart's RBAC: Ready, ClientNotAllowed, unlabelled left alone, 202, $n Event(s), deleted, nothing forbidden"
log "OK (with server dry run and operator run against $VC_KUBECONFIG)"
