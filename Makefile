# vehicle-connect — see README.md.
SHELL := /bin/bash
CARGO ?= cargo
KUBECONFIG_LOCAL := .local/kubeconfig

.PHONY: demo all build control-plane health-checker health-docs peers nats dms-venv cluster cluster-down test bench-smoke lint fmt crds clean bench openapi helm chart-crds chart-check test-jetstream

all: build

build:
	$(CARGO) build --workspace

## Build kube-apiserver + etcd from their Go modules into ~/.cache (once).
control-plane:
	@scripts/build-control-plane.sh >/dev/null

## Build vc-health (tests/peers/health: kstatus, Argo CD and Flux verdicts) into ~/.cache (once).
health-checker:
	@scripts/build-health-checker.sh >/dev/null

## Regenerate docs/health/argocd-cm.yaml from docs/health/argocd.lua.
health-docs:
	@scripts/sync-health-argocd-cm.sh

## Install the Debian packages of the servers and tools the tests run (vsftpd, openssh-server,
## …) if missing (as root or with passwordless sudo), and build nats-server (the JetStream
## tests' 3-node cluster) from its Go module into ~/.cache (once).
peers: nats
	@scripts/install-peers.sh

## Build nats-server from its Go module (github.com/nats-io/nats-server/v2) into ~/.cache (once).
nats:
	@scripts/build-nats.sh >/dev/null

## Make the Python venv of the AutoDMS test peer in ~/.cache (once).
dms-venv:
	@scripts/dms-venv.sh >/dev/null

## Start a local control plane; kubeconfig in .local/kubeconfig.
cluster: control-plane
	@$(CARGO) run -q -p vc-envtest --bin vc-envtest -- up --dir .local/cluster --kubeconfig $(KUBECONFIG_LOCAL)

## Stop it; nothing keeps running.
cluster-down:
	@$(CARGO) run -q -p vc-envtest --bin vc-envtest -- down --dir .local/cluster --kubeconfig $(KUBECONFIG_LOCAL)

## The main job, locally: control plane, operator, receiver, FTP server, sample events.
demo:
	@scripts/demo.sh

## The whole test suite (what .ci/run calls), then every benchmark at CI size. First what it
## needs: the check names whatever the machine lacks before anything is built; then every
## peer and tool the tests run is installed or built, so no test finds one missing.
test:
	@scripts/check-prereqs.sh test
	@$(MAKE) --no-print-directory control-plane peers helm dms-venv health-checker
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) --no-print-directory test-jetstream
	$(MAKE) bench-smoke

## The end-to-end tests that run the operator as a process, again on the JetStream store (each
## operator on a nats-server of its own). Skipped, as they test the embedded store's own
## bounds: its gc (`--retention-hours 0` forgets delivered events at once; JetStream's max_age
## removes events by age alone, delivered or not), and the backlog bound's exact 429 (on
## JetStream it counts the owner's taken events, which trail the accepted ones by a moment).
JETSTREAM_E2E = api_delivery api_e2e console crash_safety delivery_e2e delivery_log feed ftp_e2e \
	kubectl_plugin metrics replay self_service trust_delivery webhook_tls
test-jetstream: control-plane peers
	VC_TEST_STORE=nats $(CARGO) test --test it --no-fail-fast -- $(JETSTREAM_E2E) \
		--skip feed::a_cursor_from_before_gc_says_truncated \
		--skip trust_delivery::a_full_backlog_is_refused_with_429_and_retry_after

## Every benchmark in a debug build with small counts: checks that they run and print their
## figures (speed is never asserted; `make bench` measures).
bench-smoke: control-plane peers
	VC_BENCH_EVENTS=400 VC_BENCH_REPS=2 VC_BENCH_LATENCY_SECONDS=1 VC_BENCH_BACKLOG_EVENTS=5000 VC_BENCH_BACKLOG_VEHICLES=100 \
	VC_BENCH_VEHICLES=10 VC_BENCH_IMAGE_KIB=16 VC_BENCH_FTP_CONNECTIONS=10 \
	VC_BENCH_ZIP_IMAGES=4 VC_BENCH_ZIP_IMAGE_MIB=1 VC_BENCH_WEBHOOKS=50 VC_BENCH_FTP=10 VC_BENCH_SFTP_CONNECTIONS=20 \
	VC_BENCH_API_REQUESTS=300 VC_BENCH_API_CONNECTIONS=20 VC_BENCH_KILLS=1 VC_BENCH_LEASE_SECONDS=2 VC_BENCH_RATE=100 \
	$(CARGO) test --bench '*'

## Regenerate crds/ from the Rust types.
crds:
	@mkdir -p crds && rm -f crds/*.yaml
	$(CARGO) run -q -- crd --out-dir crds
	@scripts/sync-chart-crds.sh

## Build helm from its Go module into ~/.cache (once).
helm:
	@scripts/build-helm.sh >/dev/null

## Copy crds/ into the Helm chart (charts/vehicle-connect/files/crds).
chart-crds:
	@scripts/sync-chart-crds.sh

## Lint and render the Helm chart; with VC_KUBECONFIG also a server-side dry run
## (and with VC_OPERATOR_BIN the operator under the chart's RBAC).
chart-check: helm
	@scripts/check-chart.sh

## Benchmarks: print figures and ratios (sizes via VC_BENCH_* variables).
bench: control-plane nats
	$(CARGO) bench --bench delivery
	$(CARGO) bench --bench ftp
	$(CARGO) bench --bench sftp
	$(CARGO) bench --bench scale
	$(CARGO) bench --bench ftp_zip_memory
	$(CARGO) bench --bench backlog
	$(CARGO) bench --bench api
	$(CARGO) bench --bench replicas

## Regenerate docs/openapi.json from the Rust types.
openapi:
	@mkdir -p docs
	$(CARGO) run -q -- openapi > docs/openapi.json

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	-$(MAKE) cluster-down
	rm -rf .local target/envtest
