#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl and etcd from the Kubernetes Go modules pinned in
# go.mod/go.sum into tests/controlplane/bin/, with helm (chart tests) and luahealth (Argo CD health
# scripts in gopher-lua). Rebuilds only when a binary is missing or when go.mod,
# go.sum or this script changed since the last build (the stamp file records their digest).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$here/bin"
cd "$here"

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}' go.mod)"
[[ -n "$k8s_version" ]] || { echo "controlplane: no k8s.io/kubernetes version in go.mod" >&2; exit 1; }
stamp="$(cat go.mod go.sum build.sh luahealth/main.go | sha256sum | cut -d' ' -f1)"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"

if [[ -x "$bin/kube-apiserver" && -x "$bin/kube-controller-manager" && -x "$bin/kubectl" && -x "$bin/etcd" \
      && -x "$bin/helm" && -x "$bin/luahealth" && "$(cat "$bin/.stamp" 2>/dev/null)" == "$stamp" ]]; then
  built=1
fi
if [[ -z "${built:-}" ]]; then

echo "controlplane: building Kubernetes $k8s_version (kube-apiserver, kube-controller-manager, kubectl, etcd), helm, luahealth..." >&2
start=$SECONDS
mkdir -p "$bin"
rm -f "$bin/.stamp"
GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin/helm" helm.sh/helm/v4/cmd/helm
GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin/luahealth" ./luahealth
echo "$stamp" > "$bin/.stamp"
echo "controlplane: built in $((SECONDS - start))s into $bin" >&2
fi

# With --node: what a real node adds (node.sh): kubelet, kube-scheduler and kube-proxy from the
# same module, the end-to-end workload (a static Go binary) and the pause binary (the module's
# own pause.c, static), each rebuilt only when missing or when the stamp changed.
[[ "${1:-}" == "--node" ]] || exit 0
node_stamp="$(cat go.mod go.sum build.sh workload/main.go | sha256sum | cut -d' ' -f1)"
if [[ -x "$bin/kubelet" && -x "$bin/kube-scheduler" && -x "$bin/kube-proxy" && -x "$bin/workload" && -x "$bin/pause" \
      && "$(cat "$bin/.node-stamp" 2>/dev/null)" == "$node_stamp" ]]; then
  exit 0
fi
echo "controlplane: building the node (kubelet, kube-scheduler, kube-proxy, workload, pause)..." >&2
start=$SECONDS
rm -f "$bin/.node-stamp"
GOFLAGS=-mod=readonly go build -trimpath -ldflags "$ldflags" -o "$bin/" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy
CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$bin/workload" ./workload
k8s_dir="$(GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' k8s.io/kubernetes)"
gcc -Os -static -DVERSION="$k8s_version" -o "$bin/pause" "$k8s_dir/build/pause/linux/pause.c"
echo "$node_stamp" > "$bin/.node-stamp"
echo "controlplane: node built in $((SECONDS - start))s into $bin" >&2
