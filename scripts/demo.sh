#!/usr/bin/env bash
# `make demo`: the main job, locally. Builds what is needed, starts a real control plane
# (etcd + kube-apiserver), installs the CRDs, runs the operator, a webhook receiver that
# verifies signatures, an FTP server, an image server and a made-up DMS REST API (for the
# ApiConnection), applies examples/, posts sample events, shows the status, and keeps running
# until Ctrl-C, which stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
LOCAL="$ROOT/.local"
DEMO="$LOCAL/demo"
KCFG="$LOCAL/kubeconfig"
K=(kubectl --kubeconfig "$KCFG")
TOKEN="demo-ingest-token-$(date +%s)"
MANAGE_TOKEN="demo-manage-token-$(date +%s)"
API=127.0.0.1:8080
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# Before building or starting anything: every missing tool and busy port, named at once.
scripts/check-prereqs.sh demo --port 8080:"the operator's API" --port 8787:"the webhook receiver" \
  --port 8788:"the image server" --port 8789:"the demo DMS" --port 2121:"the FTP server"

PIDS=()

cleanup() {
  say "stopping everything the demo started"
  for p in "${PIDS[@]}" $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  make -s cluster-down || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building vehicle-connect and the local control plane (first time: several minutes)"
# Cargo says where it put the binary: CARGO_TARGET_DIR (or a config's target-dir) may move it.
# The operator and the kubectl plugin (kubectl-vc).
BINS="$(cargo build -q --bin vehicle-connect --bin kubectl-vc --message-format=json-render-diagnostics | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("reason") == "compiler-artifact" and "bin" in t.get("kind", []) and m.get("executable"):
        print(t["name"], m["executable"])
')"
BIN="$(awk '$1 == "vehicle-connect" { print $2 }' <<<"$BINS")"
PLUGIN="$(awk '$1 == "kubectl-vc" { print $2 }' <<<"$BINS")"
[[ -x "$BIN" ]] || { echo "cargo named no vehicle-connect binary (got '$BINS')" >&2; exit 1; }
[[ -x "$PLUGIN" ]] || { echo "cargo named no kubectl-vc binary (got '$BINS')" >&2; exit 1; }
# kubectl finds its plugins on the PATH.
export PATH="$(dirname "$PLUGIN"):$PATH"
scripts/build-control-plane.sh >/dev/null

say "python tools for the demo's receiver and FTP server (standardwebhooks, pyftpdlib)"
if [[ ! -x "$LOCAL/venv/bin/python" ]]; then python3 -m venv "$LOCAL/venv"; fi
"$LOCAL/venv/bin/pip" install -q standardwebhooks pyftpdlib

say "python for the demo DMS (openapi-core checks every request it gets; scripts/dms-venv.sh)"
DMS_PY=$(scripts/dms-venv.sh)

say "starting the control plane"
make -s cluster
"${K[@]}" apply --server-side -f crds/ >/dev/null
"${K[@]}" wait --for condition=established --timeout=30s crd/webhooksubscriptions.connect.vehicles.io crd/ftpconnections.connect.vehicles.io crd/apiconnections.connect.vehicles.io >/dev/null

rm -rf "$DEMO" && mkdir -p "$DEMO/ftp/dealer123" "$DEMO/images/veh-9" "$DEMO/data"
echo "$TOKEN" > "$DEMO/tokens"
# The platform operator's manage token (the delivery log, retries, test sends, the console).
echo "$MANAGE_TOKEN *" > "$DEMO/manage-tokens"
# Sample vehicle photos served locally (the events point at http://127.0.0.1:8788/images/...).
"$LOCAL/venv/bin/python" - "$DEMO/images/veh-9" <<'PY'
import os, sys
for i in range(1, 5):
    with open(os.path.join(sys.argv[1], f"{i}.jpg"), "wb") as f:
        f.write(b"\xff\xd8\xff\xe0" + os.urandom(200_000 + i * 1000) + b"\xff\xd9")
PY

say "starting the webhook receiver (:8787), image server (:8788) and FTP server (:2121)"
WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw BASIC_USER=dms BASIC_PASSWORD=change-me \
  "$LOCAL/venv/bin/python" -u examples/receiver/receiver.py 8787 >"$DEMO/receiver.log" 2>&1 &
PIDS+=($!)
(cd "$DEMO" && exec "$LOCAL/venv/bin/python" -m http.server 8788 --bind 127.0.0.1 >"$DEMO/images.log" 2>&1) &
PIDS+=($!)
"$LOCAL/venv/bin/python" - "$DEMO/ftp/dealer123" >"$DEMO/ftp.log" 2>&1 <<'PY' &
import sys, logging
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer
logging.basicConfig(level=logging.INFO)
auth = DummyAuthorizer()
auth.add_user("dealer123", "dealer123-secret", sys.argv[1], perm="elradfmwMT")
h = FTPHandler
h.authorizer = auth
h.passive_ports = range(30100, 30200)
FTPServer(("127.0.0.1", 2121), h).serve_forever()
PY
PIDS+=($!)
"$DMS_PY" tests/peers/dms/server.py --port 8789 --ready-file "$DEMO/dms.port" \
  --client-id demo-client --client-secret demo-client-secret >"$DEMO/dms.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do [[ -s "$DEMO/dms.port" ]] && break; sleep 0.1; done
[[ -s "$DEMO/dms.port" ]] || { echo "the demo DMS did not start; see $DEMO/dms.log" >&2; exit 1; }

say "starting the operator (store in .local/demo/data, API on $API)"
KUBECONFIG="$KCFG" RUST_LOG=info "$BIN" run \
  --listen "$API" --data-dir "$DEMO/data" --ingest-token-file "$DEMO/tokens" \
  --manage-token-file "$DEMO/manage-tokens" \
  --allow-targets 127.0.0.0/8 >"$DEMO/operator.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do curl -fs "http://$API/readyz" >/dev/null && break; sleep 0.2; done
curl -fs "http://$API/readyz" >/dev/null || { echo "operator did not start; see $DEMO/operator.log" >&2; tail -20 "$DEMO/operator.log" >&2; exit 1; }

say "applying examples/ (and examples/api/ with the DMS's OpenAPI document as a ConfigMap)"
# The numbered files: the others (webhook-private-ca.yaml) need a receiver of your own.
"${K[@]}" apply $(printf -- ' -f %s' examples/[0-9]*.yaml)
"${K[@]}" -n dealer-123 create configmap autodms-openapi \
  --from-file=openapi.yaml=tests/peers/dms/openapi.yaml >/dev/null
"${K[@]}" apply -f examples/api/
for _ in $(seq 1 60); do
  ready=$("${K[@]}" get whs,ftpc,apic -A -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  [[ "$ready" -ge 5 ]] && break; sleep 0.5
done

say "posting sample events (vehicle.processed, vehicle.created, user.created)"
for ev in vehicle.processed vehicle.created user.created; do
  curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    --data @"examples/events/$ev.json" "http://$API/v1/events"; echo
done
sleep 4

say "kubectl get webhooksubscriptions,ftpconnections,apiconnections -A"
"${K[@]}" get webhooksubscriptions,ftpconnections,apiconnections -A
say "webhooks the receiver got (signatures verified with the standardwebhooks library)"
cat "$DEMO/receiver.log"
say "files on the FTP server (.local/demo/ftp/dealer123)"
(cd "$DEMO/ftp/dealer123" && find . -type f -printf '%p  %s bytes\n' | sort) || true
say "requests the DMS got (each checked by openapi-core against its OpenAPI document)"
"$LOCAL/venv/bin/python" - <<'PY' || true
import json, urllib.request
s = json.load(urllib.request.urlopen("http://127.0.0.1:8789/_admin/state"))
for r in s["requests"]:
    print(f"{r['method']:6} {r['path']:40} -> {r['status']}  valid={r['valid']}  Idempotency-Key={r.get('idempotencyKey')}")
for vid, v in s["vehicles"].items():
    print(f"vehicle {vid}: vin={v['vin']} status={v['status']} photos={len(v['photos'])}")
PY

say "kubectl vc deliveries (the delivery log: every attempt and what the receiver answered)"
export VC_SERVER="http://$API" VC_TOKEN="$MANAGE_TOKEN"
kubectl vc deliveries --limit 12 || true
say "kubectl vc test whs/dms-vehicle-processed -n dealer-123 (a sample event sent now)"
kubectl vc test whs/dms-vehicle-processed -n dealer-123 || true

cat <<MSG

The demo keeps running. Try, in another terminal:
  export KUBECONFIG=$KCFG
  kubectl get whs,ftpc,apic -A                 # status, counters
  export PATH=$(dirname "$PLUGIN"):\$PATH VC_SERVER=http://$API VC_TOKEN=$MANAGE_TOKEN
  kubectl vc deliveries --status failed        # the delivery log (kubectl vc --help)
  kubectl vc event evt_sample_vehicle_processed --client dealer-123
  kubectl vc replay whs/dms-vehicle-processed -n dealer-123 --since 1h
  $BIN render --connection examples/api/apiconnection-autodms.yaml \\
       --event examples/events/vehicle.processed.json   # what an event becomes, offline
  kubectl describe whs -n dealer-123 dms-vehicle-processed
  curl -H 'Authorization: Bearer $TOKEN' -H 'content-type: application/json' \\
       --data @examples/events/vehicle.deleted.json http://$API/v1/events
  kubectl -n dealer-123 patch whs ana-uploads --type merge -p '{"spec":{"suspend":true}}'
  curl http://$API/metrics | grep vehicle_connect
  tail -f $DEMO/receiver.log $DEMO/operator.log
Open http://$API/console in a browser and sign in with $MANAGE_TOKEN.
Ctrl-C stops everything.
MSG
# `wait` (unlike a foreground sleep) lets the INT/TERM trap run at once.
while true; do
  sleep 3600 &
  wait $! || true
done
