#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for tests and local use: etcd,
# kube-apiserver (TLS, RBAC, service-account keys, static test identities) and
# kube-controller-manager (garbage collector, Deployments, ReplicaSets, Jobs, namespaces).
# There is no kubelet unless --node is given: then a real node (node.sh: containerd, kubelet,
# kube-scheduler, kube-proxy, local images; root only, one per machine) runs pods.
#
#   cluster.sh up [--dir DIR] [--watch-pid PID] [--node]
#   cluster.sh node-cleanup      # removes what a node left behind (after a kill -9)
#
# Runs in the foreground until interrupted (or until process PID exits), then stops every
# process it started and deletes its data. For outage tests, the API server can be killed and
# started again while the rest keeps running:
#
#   cluster.sh kill-apiserver --dir DIR    # SIGKILL; it stays down
#   cluster.sh start-apiserver --dir DIR   # started again (same port, same data)
# DIR (default: a new temporary directory) receives
# one kubeconfig per identity (kubeconfig-<name>; `kubeconfig` is the admin), `env` with the
# export line, `pki/webhook-client-ca.crt` (the CA of the client certificate the API server
# presents to admission webhooks: give it to `dvo run --webhook-client-ca`), and `ready` once
# /readyz answers ok.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"

usage() { echo "usage: $0 up [--dir DIR] [--watch-pid PID] [--node] | kill-apiserver --dir DIR | start-apiserver --dir DIR | node-cleanup" >&2; exit 2; }
case "${1:-}" in
  node-cleanup)
    # shellcheck source=node.sh
    source "$here/node.sh"
    node_stop_workloads
    # What a killed cluster.sh --node left running: the node's processes (by this checkout's
    # binaries and the node's containerd config) and an API server bound to the node's address.
    pkill -KILL -f "^$bin/(kube-proxy|kube-scheduler|kubelet) " 2>/dev/null || true
    pkill -KILL -f "^containerd --config .*/node/containerd.toml" 2>/dev/null || true
    pkill -KILL -f "^$bin/kube-apiserver .*--advertise-address 10.244.0.1" 2>/dev/null || true
    node_cleanup
    exit 0 ;;
  kill-apiserver|start-apiserver)
    [[ "${2:-}" == "--dir" && -n "${3:-}" ]] || usage
    if [[ "$1" == kill-apiserver ]]; then
      touch "$3/apiserver-down"
      kill -KILL "$(cat "$3/kube-apiserver.pid")"
    else
      rm -f "$3/apiserver-down"
    fi
    exit 0 ;;
  up) shift ;;
  *) usage ;;
esac
dir=""
watch_pid=""
node=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --watch-pid) watch_pid="$2"; shift 2 ;;
    --node) node=1; shift ;;
    *) usage ;;
  esac
done

"$here/build.sh" ${node:+--node}
if [[ -n "$node" ]]; then
  # shellcheck source=node.sh
  source "$here/node.sh"
  node_check
fi
[[ -n "$dir" ]] || dir="$(mktemp -d "${TMPDIR:-/tmp}/dvo-controlplane.XXXXXX")"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
rm -f "$dir/ready"

pids=()
apiserver_pid=""
stop() {
  trap - EXIT INT TERM
  [[ -z "$node" ]] || node_stop_workloads
  [[ -z "$apiserver_pid" ]] || kill -KILL "$apiserver_pid" 2>/dev/null || true
  # Newest first (controller-manager, apiserver, etcd), each given 5s to exit before SIGKILL.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid="${pids[$i]}"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  [[ -z "$node" ]] || node_cleanup
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 0' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- certificates and keys -------------------------------------------------------------------
pki="$dir/pki"
mkdir -p "$pki"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dvo-test-ca" \
  -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
  -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
# Also as pods reach it (the kubernetes Service's address, the node's address) when a node runs.
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc,DNS:kubernetes.default,DNS:kubernetes,IP:10.96.0.1,IP:10.244.0.1\n' > "$pki/san.ext"
openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
# The client certificate the API server presents to admission webhooks (its own CA, so that a
# webhook that trusts it trusts nothing else): see AdmissionConfiguration below.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dvo-test-webhook-client-ca" \
  -keyout "$pki/webhook-client-ca.key" -out "$pki/webhook-client-ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver-webhook-client" \
  -keyout "$pki/webhook-client.key" -out "$pki/webhook-client.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' > "$pki/client.ext"
openssl x509 -req -in "$pki/webhook-client.csr" -CA "$pki/webhook-client-ca.crt" \
  -CAkey "$pki/webhook-client-ca.key" -CAcreateserial -days 2 -extfile "$pki/client.ext" \
  -out "$pki/webhook-client.crt" 2>/dev/null
cat > "$pki/webhook-client.kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
- name: "*"
  user:
    client-certificate: $pki/webhook-client.crt
    client-key: $pki/webhook-client.key
EOF
cat > "$pki/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $pki/webhook-client.kubeconfig
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: $pki/webhook-client.kubeconfig
EOF
[[ -z "$node" ]] || { node_certs "$pki"; node_network_up; }
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

# --- people who sign in with Entra ID --------------------------------------------------------
# An Entra ID look-alike issuer on loopback: the API server authenticates its RS256 tokens with a
# structured AuthenticationConfiguration (issuer https://login.microsoftonline.com/TENANT/v2.0,
# discovery and JWKS fetched from here), mapping upn → user name, oid → UID, groups → groups, and
# the amr and tid claims into userInfo.extra (dvo.caat.io/amr, dvo.caat.io/tid), where the dvo
# webhook reads whether the sign-in used MFA. Tests sign tokens with entra/key.pem (kid in
# entra/kid, tenant in entra/tenant, audience in entra/audience).
entra_tenant=72f988bf-86f1-41af-91ab-2d7cd011db47
entra_audience=api://dvo-cluster
entra="$dir/entra"
mkdir -p "$entra/www"
openssl genrsa -out "$entra/key.pem" 2048 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=entra-look-alike" \
  -keyout "$entra/tls.key" -out "$entra/tls.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$entra/san.ext"
openssl x509 -req -in "$entra/tls.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
  -days 2 -extfile "$entra/san.ext" -out "$entra/tls.crt" 2>/dev/null
entra_port="$(free_port)"
printf '%s' "$entra_tenant" > "$entra/tenant"
printf '%s' "$entra_audience" > "$entra/audience"
printf '%s' "cluster-key-1" > "$entra/kid"
python3 - "$entra" "$entra_tenant" "$entra_port" \
  "$(openssl rsa -in "$entra/key.pem" -noout -modulus 2>/dev/null | cut -d= -f2)" <<'PY'
import base64, json, os, sys
entra, tenant, port, modulus = sys.argv[1:]
n = base64.urlsafe_b64encode(bytes.fromhex(modulus)).rstrip(b"=").decode()
base = f"{entra}/www/{tenant}"
os.makedirs(f"{base}/v2.0/.well-known", exist_ok=True)
os.makedirs(f"{base}/discovery/v2.0", exist_ok=True)
with open(f"{base}/v2.0/.well-known/openid-configuration", "w") as f:
    json.dump({"issuer": f"https://login.microsoftonline.com/{tenant}/v2.0",
               "jwks_uri": f"https://127.0.0.1:{port}/{tenant}/discovery/v2.0/keys",
               "id_token_signing_alg_values_supported": ["RS256"]}, f)
with open(f"{base}/discovery/v2.0/keys", "w") as f:
    json.dump({"keys": [{"kty": "RSA", "use": "sig", "kid": "cluster-key-1", "n": n, "e": "AQAB"}]}, f)
PY
python3 -c '
import functools, http.server, ssl, sys
d, port, cert, key = sys.argv[1:]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=d)
httpd = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), handler)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
httpd.serve_forever()
' "$entra/www" "$entra_port" "$entra/tls.crt" "$entra/tls.key" > "$dir/entra-issuer.log" 2>&1 &
pids+=($!)
cat > "$pki/authentication.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AuthenticationConfiguration
jwt:
- issuer:
    url: https://login.microsoftonline.com/$entra_tenant/v2.0
    discoveryURL: https://127.0.0.1:$entra_port/$entra_tenant/v2.0/.well-known/openid-configuration
    certificateAuthority: |
$(sed 's/^/      /' "$pki/ca.crt")
    audiences: [$entra_audience]
  claimValidationRules:
  - expression: "claims.tid == '$entra_tenant'"
    message: the token is from another tenant
  claimMappings:
    username:
      expression: claims.upn
    groups:
      expression: "has(claims.groups) ? claims.groups : []"
    uid:
      expression: claims.oid
    extra:
    - key: dvo.caat.io/amr
      valueExpression: "has(claims.amr) ? claims.amr : []"
    - key: dvo.caat.io/tid
      valueExpression: claims.tid
EOF

# --- test identities: name, user, groups ----------------------------------------------------
# Groups named like Entra ID object IDs stand for directory groups; the role mapping maps them.
identities=(
  "admin|alice-admin|system:masters,dvo-admins"
  "release-manager-1|rosa-release|3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"
  "release-manager-2|raj-release|3f2a8c1e-5b7d-4e9a-a1c2-0d4e6f8b9a10"
  "developer|dev-dana|a7c4e2b9-1d3f-4a6b-8e5c-9f0a1b2c3d4e"
  "operator|ops-omar|dvo-operators"
  "viewer|vera-viewer|dvo-viewers"
  "ci|system:serviceaccount:ci:deployer|system:serviceaccounts,system:serviceaccounts:ci"
  "dvo-operator|system:serviceaccount:dvo-system:dvo-operator|system:serviceaccounts,system:serviceaccounts:dvo-system,dvo-test-superusers"
  "controller-manager|system:kube-controller-manager|system:masters"
)
: > "$pki/tokens.csv"
for entry in "${identities[@]}"; do
  IFS='|' read -r name user groups <<< "$entry"
  token="$(openssl rand -hex 24)"
  printf '%s,%s,%s,"%s"\n' "$token" "$user" "uid-$name" "$groups" >> "$pki/tokens.csv"
  printf '%s' "$token" > "$pki/token-$name"
done

# --- etcd ------------------------------------------------------------------------------------
etcd_port="$(free_port)"
peer_port="$(free_port)"
"$bin/etcd" --name dvo-test --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "dvo-test=http://127.0.0.1:$peer_port" \
  --unsafe-no-fsync --log-level warn > "$dir/etcd.log" 2>&1 &
pids+=($!)

# --- kube-apiserver --------------------------------------------------------------------------
api_port="$(free_port)"
# Loopback only, or with a node: on every address (pods reach it through the kubernetes Service
# at the node's address), the Node authorizer, and a client certificate for kubelets.
api_node=(--bind-address 127.0.0.1 --advertise-address 127.0.0.1 --authorization-mode RBAC --endpoint-reconciler-type none)
[[ -z "$node" ]] || api_node=(--bind-address 0.0.0.0 --advertise-address "$node_ip" --authorization-mode Node,RBAC
  --anonymous-auth=false
  --enable-admission-plugins NodeRestriction
  --kubelet-client-certificate "$pki/kubelet-client.crt" --kubelet-client-key "$pki/kubelet-client.key")
start_apiserver() {
"$bin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  "${api_node[@]}" --secure-port "$api_port" \
  --cert-dir "$dir/apiserver-certs" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --token-auth-file "$pki/tokens.csv" \
  --authentication-config "$pki/authentication.yaml" \
  --admission-control-config-file "$pki/admission.yaml" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-account-issuer https://kubernetes.default.svc \
  --service-cluster-ip-range 10.96.0.0/24 \
  --profiling=false \
  >> "$dir/kube-apiserver.log" 2>&1 &
apiserver_pid=$!
echo "$apiserver_pid" > "$dir/kube-apiserver.pid"
}
start_apiserver

server="https://127.0.0.1:$api_port"
write_kubeconfig() { # name
  cat > "$dir/kubeconfig-$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dvo-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $1
  user:
    token: $(cat "$pki/token-$1")
contexts:
- name: $1
  context: {cluster: dvo-test, user: $1, namespace: default}
current-context: $1
EOF
}
for entry in "${identities[@]}"; do write_kubeconfig "${entry%%|*}"; done
cp "$dir/kubeconfig-admin" "$dir/kubeconfig"

deadline=$((SECONDS + 120))
until curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $(cat "$pki/token-admin")" \
    "$server/readyz" > /dev/null 2>&1; do
  if ((SECONDS > deadline)); then
    echo "controlplane: kube-apiserver not ready after 120s; last log lines:" >&2
    tail -n 30 "$dir/kube-apiserver.log" >&2
    exit 1
  fi
  for pid in "${pids[@]}" "$apiserver_pid"; do
    kill -0 "$pid" 2>/dev/null || { echo "controlplane: a process died; logs in $dir" >&2; tail -n 30 "$dir"/*.log >&2; exit 1; }
  done
  sleep 0.2
done

# --- kube-controller-manager -----------------------------------------------------------------
controllers="garbage-collector-controller,clusterrole-aggregation-controller,deployment-controller,replicaset-controller,job-controller,namespace-controller,serviceaccount-controller,root-ca-certificate-publisher-controller"
# With a node, Services get endpoints, PodDisruptionBudgets are kept, pods of a gone node go, and
# the node lifecycle controller lifts the not-ready taint the kubelet registers with.
[[ -z "$node" ]] || controllers="$controllers,endpoints-controller,endpointslice-controller,disruption-controller,pod-garbage-collector-controller,node-lifecycle-controller"
"$bin/kube-controller-manager" \
  --kubeconfig "$dir/kubeconfig-controller-manager" \
  --leader-elect=false --secure-port 0 --kube-api-qps 500 --kube-api-burst 1000 \
  --controllers "${DVO_CONTROLLERS:-$controllers}" \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  > "$dir/kube-controller-manager.log" 2>&1 &
pids+=($!)

[[ -z "$node" ]] || node_up
echo "export KUBECONFIG=$dir/kubeconfig" > "$dir/env"
touch "$dir/ready"
echo "controlplane: ready at $server (Kubernetes $("$bin/kube-apiserver" --version | cut -d' ' -f2))"
echo "controlplane: identities: $(for e in "${identities[@]}"; do printf '%s ' "${e%%|*}"; done)(kubeconfig-<name> in $dir)"
echo "export KUBECONFIG=$dir/kubeconfig"

while true; do
  if [[ -n "$watch_pid" ]] && ! kill -0 "$watch_pid" 2>/dev/null; then exit 0; fi
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "controlplane: a process exited; see logs in $dir" >&2; tail -n 20 "$dir"/*.log >&2; exit 1; }
  done
  if ! kill -0 "$apiserver_pid" 2>/dev/null; then
    wait "$apiserver_pid" 2>/dev/null || true
    if [[ -e "$dir/apiserver-down" ]]; then
      :  # killed on purpose (kill-apiserver): down until start-apiserver
    elif [[ -e "$dir/kube-apiserver.pid" && "$(cat "$dir/kube-apiserver.pid")" == "$apiserver_pid" && -e "$dir/apiserver-was-down" ]]; then
      rm -f "$dir/apiserver-was-down"
      start_apiserver
    else
      echo "controlplane: kube-apiserver exited; see logs in $dir" >&2; tail -n 20 "$dir/kube-apiserver.log" >&2; exit 1
    fi
  fi
  [[ ! -e "$dir/apiserver-down" ]] || touch "$dir/apiserver-was-down"
  sleep 0.2
done
