#!/usr/bin/env bash
# Runs dvo-operator locally, out of cluster, the way the chart would run it in one.
#   scripts/local.sh run    the operator and its webhook in the foreground (Ctrl-C stops all)
#   scripts/local.sh demo   the production approval story, step by step, then stops
# Without a reachable cluster in KUBECONFIG it starts the local control plane
# (tests/controlplane) first. The operator runs with the token of the chart's ServiceAccount.
# NODE=1 (root): the local control plane gets a real node, the operator runs as the chart's own
# two pods from the image of the built binary, and agents run as real pods (the examples' images
# are the local workload image under their names, so they start without a registry).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
mode="${1:-run}"
bin="$here/tests/controlplane/bin"
state="$here/.run"
mkdir -p "$state"
pids=()
cleanup() {
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

node="${NODE:-}"
tests/controlplane/build.sh ${node:+--node}
cargo build --quiet --bin dvo --bin kubectl-dvo

local_cluster=""
if [[ "$mode" == demo || -n "$node" ]] || ! "$bin/kubectl" version --request-timeout=3s > /dev/null 2>&1; then
  local_cluster="$state/cluster"
  rm -rf "$local_cluster"
  step "starting a local control plane (kube-apiserver, etcd, kube-controller-manager${node:+, and a real node})"
  tests/controlplane/cluster.sh up --dir "$local_cluster" --watch-pid $$ ${node:+--node} > "$state/cluster.log" 2>&1 &
  pids+=($!)
  until [[ -f "$local_cluster/ready" ]]; do
    kill -0 "${pids[0]}" 2>/dev/null || { cat "$state/cluster.log"; exit 1; }
    sleep 0.2
  done
  export KUBECONFIG="$local_cluster/kubeconfig"
fi
k() { "$bin/kubectl" "$@"; }

values="$state/values.yaml"
{ echo "roleMapping:"; grep -v '^#' examples/role-mapping.yaml | sed 's/^/  /'; } > "$values"
if [[ -n "$node" ]]; then
  step "making the operator's image and the agents' image, into the node"
  ctr_() { ctr --address /run/dvo-containerd/containerd.sock --namespace k8s.io "$@"; }
  python3 scripts/image.py --binary target/debug/dvo --out "$state/dvo-operator.tar" --name localhost/dvo-operator:local > /dev/null
  ctr_ images import --all-platforms "$state/dvo-operator.tar" > /dev/null
  for name in registry.example.com/agents/gha:1.4.2 registry.example.com/agents/gha-tests:1.4.2; do
    python3 scripts/image.py --static "$bin/workload" --dest workload --name "$name" --out "$state/workload.tar" > /dev/null
    ctr_ images import --all-platforms "$state/workload.tar" > /dev/null
  done
  printf 'replicaCount: 2\nimage: {repository: localhost/dvo-operator, tag: local, pullPolicy: Never}\n' >> "$values"
  step "installing the CRDs and the chart: the operator runs as its two pods on the node"
else
  echo "replicaCount: 0" >> "$values"
  step "installing the CRDs and the chart (RBAC, role mapping, no pods: the operator runs here)"
fi
k apply --server-side -f crds/ > /dev/null
HELM_CACHE_HOME="$state/helm" HELM_CONFIG_HOME="$state/helm" HELM_DATA_HOME="$state/helm" \
  "$bin/helm" upgrade --install dvo charts/dvo-operator --namespace dvo-system --create-namespace \
  --values "$values" ${node:+--wait} > /dev/null

if [[ -n "$node" ]]; then
  k -n dvo-system get pods -o wide
  # The API server reaches the webhook once kube-proxy has the Service's rules.
  for _ in $(seq 300); do
    KUBECONFIG="$local_cluster/kubeconfig-developer" k -n default create --dry-run=server -f examples/agentdeployment.yaml \
      > /dev/null 2>&1 && break
    sleep 0.2
  done
else
step "running the operator with the chart's ServiceAccount token (webhook on https://127.0.0.1:9443)"
token="$(k -n dvo-system create token dvo-operator --duration=24h)"
operator_kubeconfig="$state/kubeconfig-operator"
k config view --raw --minify > "$operator_kubeconfig"
KUBECONFIG="$operator_kubeconfig" k config set-credentials operator --token="$token" > /dev/null
KUBECONFIG="$operator_kubeconfig" k config set-context --current --user=operator > /dev/null
webhook_url="${WEBHOOK_URL:-https://127.0.0.1:9443}"
# On our local control plane the API server authenticates to webhooks with a client certificate.
client_ca=()
if [[ -n "$local_cluster" ]]; then client_ca=(--webhook-client-ca "$local_cluster/pki/webhook-client-ca.crt"); fi
KUBECONFIG="$operator_kubeconfig" RUST_LOG="${RUST_LOG:-info,kube=warn}" target/debug/dvo run \
  --namespace dvo-system --health-addr 127.0.0.1:8081 \
  --webhook-addr 127.0.0.1:9443 --webhook-url "$webhook_url" "${client_ca[@]}" > "$state/operator.log" 2>&1 &
pids+=($!)
until curl -fsS http://127.0.0.1:8081/readyz > /dev/null 2>&1; do
  kill -0 "${pids[-1]}" 2>/dev/null || { tail -20 "$state/operator.log"; exit 1; }
  sleep 0.2
done
echo "operator ready; log: $state/operator.log; metrics: http://127.0.0.1:8081/metrics"
fi

if [[ "$mode" == run ]]; then
  step "applying the examples"
  for f in examples/policies/*.yaml examples/capabilities/*.yaml examples/agentdeployment.yaml examples/copilot-agentdeployment.yaml; do
    k apply --server-side -f "$f" > /dev/null
  done
  k get dvo -A
  if [[ -n "$local_cluster" ]]; then
    echo
    echo "export KUBECONFIG=$local_cluster/kubeconfig   # people: kubeconfig-<identity> next to it"
  fi
  echo "export PATH=$here/target/debug:\$PATH          # kubectl dvo ..."
  echo "Ctrl-C stops the operator${local_cluster:+ and the control plane}."
  wait "${pids[-1]}"
  exit
fi

# --- demo: the production approval story ------------------------------------------------------
as() { local who="$1"; shift; printf '\n$ kubectl %s   # as %s\n' "$*" "$who"; KUBECONFIG="$local_cluster/kubeconfig-$who" k "$@" || true; }
plugin() { local who="$1"; shift; printf '\n$ kubectl dvo %s   # as %s\n' "$*" "$who"; KUBECONFIG="$local_cluster/kubeconfig-$who" PATH="$here/target/debug:$PATH" k dvo "$@" || true; }
k create namespace payments > /dev/null
# People get the built-in `edit` role; the chart aggregated our kinds into it.
k create clusterrolebinding demo-people --clusterrole=edit \
  --user=ops-omar --user=dev-dana --user=rosa-release --user=raj-release > /dev/null
wait_for() { local what="$1"; shift; for _ in $(seq 300); do "$@" > /dev/null 2>&1 && return; sleep 0.2; done; echo "timed out waiting for $what" >&2; exit 1; }
wait_for "aggregated roles" bash -c "KUBECONFIG=$local_cluster/kubeconfig-operator $bin/kubectl auth can-i create agentdeployments.dvo.caat.io -n payments | grep -q yes"

step "1. the platform team requires two release managers for production"
cat > "$state/policy.yaml" <<'YAML'
apiVersion: dvo.caat.io/v1alpha1
kind: DeploymentPolicy
metadata: {name: two-release-managers, labels: {dvo.caat.io/protected: "true"}}
spec:
  scope: {environments: [production]}
  action: RequireApproval
  approval: {roles: [release_manager], minApprovals: 2}
YAML
as admin apply --server-side -f "$state/policy.yaml"

step "2. a developer may not deploy to staging; production goes to approval"
as developer -n payments apply --server-side -f examples/agentdeployment.yaml
as operator -n payments apply --server-side -f examples/gha-production.yaml
wait_for "the ApprovalRequest" bash -c "$bin/kubectl -n payments get apr -o name | grep -q ."
wait_for "its status" bash -c "$bin/kubectl -n payments get apr -o jsonpath='{.items[0].status.phase}' | grep -q Pending"
plugin operator status gha-production -n payments

step "3. who may approve? the requester, a developer, and the same person twice are refused"
apr="$(k -n payments get apr -o jsonpath='{.items[0].metadata.name}')"
plugin release-manager-1 pending -n payments
as operator -n payments annotate apr "$apr" dvo.caat.io/approve="my own change"
as developer -n payments annotate apr "$apr" dvo.caat.io/approve="looks fine"
as release-manager-1 -n payments annotate apr "$apr" dvo.caat.io/approve="reviewed the diff"
as release-manager-1 -n payments annotate apr "$apr" dvo.caat.io/approve="again"

step "4. a second release manager approves: exactly the approved spec rolls out"
as release-manager-2 -n payments annotate apr "$apr" dvo.caat.io/approve="ok for release"
wait_for "the rollout" "$bin/kubectl" -n payments get deployment gha-production
if [[ -n "$node" ]]; then
  wait_for "Deployed: its pods Running and Ready" bash -c "$bin/kubectl -n payments get adep gha-production -o jsonpath='{.status.phase}' | grep -q Deployed"
  k -n payments get pods -o wide
fi
k -n payments get adep,apr,deploy
plugin operator status gha-production -n payments

step "5. only admins change policies; the audit log proves who did what"
as release-manager-1 delete dpol two-release-managers
KUBECONFIG="$local_cluster/kubeconfig" target/debug/dvo audit verify --namespace dvo-system || true
KUBECONFIG="$local_cluster/kubeconfig" target/debug/dvo audit tail -n 8 --namespace dvo-system \
  | python3 -c 'import json,sys
for l in sys.stdin:
    e=json.loads(l); print(e["seq"], e["event_type"], e["user_id"], e["resource"], e["status"])' || true
step "done: the control plane and the operator stop now"
