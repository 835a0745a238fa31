# A real node for the control plane of cluster.sh (sourced by it with --node): Debian's
# containerd and runc with the bridge CNI plugin, kubelet, kube-scheduler and kube-proxy built
# from the same Kubernetes module, and the images the end-to-end suite needs (pause, workload)
# made locally. Root only; one node per machine (the bridge, port 10250 and /kubepods are
# global). No traffic leaves the machine: pods have routes only to the pod and Service ranges,
# forwarded traffic leaving the pod subnet is dropped, and containerd pulls through a proxy that
# is not there, so anything but a local image fails at once.
#
# Facts behind each setting: ../../../shared/notes/real-node.md (and the comments below).

node_name=dvo-node
node_ip=10.244.0.1
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/24
bridge=dvo0
containerd_root=/var/lib/dvo-containerd
containerd_state=/run/dvo-containerd
containerd_sock="$containerd_state/containerd.sock"
contain_chain=DVO-NODE-CONTAIN
node_dir=""
# Kernel settings the kubelet, kube-proxy and the bridge change machine-wide: their values before
# the node are kept here (a fixed path, so that node-cleanup after a kill finds them) and put
# back when it goes.
saved_sysctls=/run/dvo-node-sysctls
sysctls=(kernel.panic kernel.panic_on_oops vm.overcommit_memory kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables net.netfilter.nf_conntrack_tcp_timeout_established
  net.netfilter.nf_conntrack_tcp_timeout_close_wait)

node_fail() { echo "node: $*" >&2; exit 1; }

# What the node needs, before anything is started.
node_check() {
  [[ $EUID -eq 0 ]] || node_fail "a real node needs root"
  local t
  for t in containerd runc ctr iptables ip6tables ip conntrack gcc; do
    command -v "$t" > /dev/null || node_fail "$t is missing (apt-get install containerd runc containernetworking-plugins iptables conntrack gcc)"
  done
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || node_fail "CNI plugins are missing (apt-get install containernetworking-plugins)"
  for t in kubelet kube-scheduler kube-proxy pause workload; do
    [[ -x "$bin/$t" ]] || node_fail "$bin/$t is missing (tests/controlplane/build.sh builds it)"
  done
  ! ip link show "$bridge" > /dev/null 2>&1 || node_fail "bridge $bridge exists: another node runs on this machine (or one was not torn down: cluster.sh node-cleanup)"
}

# Certificates the node adds to the control plane's: the kubelet's client certificate (the Node
# authorizer knows it by its name) and the API server's client certificate for kubelets.
node_certs() { # pki
  local pki="$1"
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:nodes/CN=system:node:$node_name" \
    -keyout "$pki/node.key" -out "$pki/node.csr" 2>/dev/null
  openssl x509 -req -in "$pki/node.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/client.ext" -out "$pki/node.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" \
    -keyout "$pki/kubelet-client.key" -out "$pki/kubelet-client.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet-client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 2 -extfile "$pki/client.ext" -out "$pki/kubelet-client.crt" 2>/dev/null
}

# The bridge pods attach to (the kubelet refuses a loopback node IP, so the node's address is
# the bridge's), and the rules that keep pods' traffic on this machine.
node_network_up() {
  if [[ ! -e "$saved_sysctls" ]]; then
    local key
    for key in "${sysctls[@]}"; do
      printf '%s=%s\n' "$key" "$(sysctl -n "$key" 2>/dev/null)" >> "$saved_sysctls.tmp"
    done
    mv "$saved_sysctls.tmp" "$saved_sysctls"
  fi
  ip link add "$bridge" type bridge
  ip addr add "$node_ip/24" dev "$bridge"
  ip link set "$bridge" up
  echo 1 > /proc/sys/net/ipv4/ip_forward
  echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
  iptables -N "$contain_chain"
  iptables -A "$contain_chain" -s "$pod_cidr" -d "$pod_cidr" -j ACCEPT
  iptables -A "$contain_chain" -s "$pod_cidr" -j DROP
  iptables -I FORWARD 1 -j "$contain_chain"
  # Before kube-proxy's own rules (it leaves mangle alone): nothing from a pod leaves the bridge,
  # whatever its source address.
  iptables -t mangle -N "$contain_chain"
  iptables -t mangle -A "$contain_chain" -i "$bridge" ! -o "$bridge" -j DROP
  iptables -t mangle -I FORWARD 1 -j "$contain_chain"
}

# Pods may reach this machine only at the API server (through the kubernetes Service).
node_input_rules() { # api port
  iptables -N "$contain_chain-IN"
  iptables -A "$contain_chain-IN" -p tcp --dport "$1" -j ACCEPT
  iptables -A "$contain_chain-IN" -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  iptables -A "$contain_chain-IN" -j DROP
  iptables -I INPUT 1 -i "$bridge" -j "$contain_chain-IN"
}

node_network_down() {
  iptables -D FORWARD -j "$contain_chain" 2>/dev/null || true
  iptables -F "$contain_chain" 2>/dev/null || true
  iptables -X "$contain_chain" 2>/dev/null || true
  iptables -t mangle -D FORWARD -j "$contain_chain" 2>/dev/null || true
  iptables -t mangle -F "$contain_chain" 2>/dev/null || true
  iptables -t mangle -X "$contain_chain" 2>/dev/null || true
  iptables -D INPUT -i "$bridge" -j "$contain_chain-IN" 2>/dev/null || true
  iptables -F "$contain_chain-IN" 2>/dev/null || true
  iptables -X "$contain_chain-IN" 2>/dev/null || true
  # Pods' network namespaces (CNI names them cni-*); their veths go with them.
  local ns
  for ns in /run/netns/cni-*; do
    [[ -e "$ns" ]] || continue
    umount "$ns" 2>/dev/null || true
    rm -f "$ns"
  done
  ip link del "$bridge" 2>/dev/null || true
  if [[ -e "$saved_sysctls" ]]; then
    sysctl -q -p "$saved_sysctls" > /dev/null 2>&1 || true
    rm -f "$saved_sysctls"
  fi
}

node_ctr() { ctr --address "$containerd_sock" --namespace k8s.io "$@"; }

node_containerd_up() {
  mkdir -p "$node_dir/cni" "$containerd_root" "$containerd_state"
  cat > "$node_dir/cni/10-dvo.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "dvo", "plugins": [
  {"type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$node_dir/cni-ipam",
            "ranges": [[{"subnet": "$pod_cidr", "rangeStart": "10.244.0.10", "gateway": "$node_ip"}]],
            "routes": [{"dst": "$pod_cidr"}, {"dst": "$service_cidr"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
  cat > "$node_dir/containerd.toml" <<EOF
version = 2
root = "$containerd_root"
state = "$containerd_state"
[grpc]
  address = "$containerd_sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:3.10"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node_dir/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
EOF
  HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
    containerd --config "$node_dir/containerd.toml" > "$dir/containerd.log" 2>&1 &
  pids+=($!)
  local deadline=$((SECONDS + 30))
  until node_ctr version > /dev/null 2>&1; do
    ((SECONDS < deadline)) || { tail -n 20 "$dir/containerd.log" >&2; node_fail "containerd did not start"; }
    sleep 0.2
  done
}

# Imports an OCI image archive into the node's image store.
node_import() { # archive
  node_ctr images import --all-platforms "$1" > /dev/null
}

node_images() {
  local images="$node_dir/images"
  mkdir -p "$images"
  python3 "$here/../../scripts/image.py" --static "$bin/pause" --dest pause --name localhost/pause:3.10 \
    --out "$images/pause.tar" > /dev/null
  python3 "$here/../../scripts/image.py" --static "$bin/workload" --dest workload \
    --name localhost/dvo-workload:1 --out "$images/workload.tar" > /dev/null
  node_import "$images/pause.tar"
  node_import "$images/workload.tar"
}

node_kubeconfig() { # name cert key
  cat > "$node_dir/kubeconfig-$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: dvo-test
  cluster: {server: "https://$node_ip:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $1
  user: {client-certificate: "$2", client-key: "$3"}
contexts:
- name: $1
  context: {cluster: dvo-test, user: $1}
current-context: $1
EOF
}

node_kubelet_up() {
  node_kubeconfig kubelet "$pki/node.crt" "$pki/node.key"
  cat > "$node_dir/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 here (refused by default since 1.35) and no systemd.
failCgroupV1: false
cgroupDriver: cgroupfs
# No DNS in this cluster.
resolvConf: ""
containerRuntimeEndpoint: unix://$containerd_sock
podCIDR: $pod_cidr
failSwapOn: false
serializeImagePulls: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: AlwaysAllow}
# A test machine's disk may be nearly full: evict only when it really is.
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  "$bin/kubelet" --config "$node_dir/kubelet.yaml" --kubeconfig "$node_dir/kubeconfig-kubelet" \
    --node-ip "$node_ip" --hostname-override "$node_name" --v=1 > "$dir/kubelet.log" 2>&1 &
  pids+=($!)
}

node_scheduler_up() {
  "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig-controller-manager" --leader-elect=false \
    --secure-port 0 > "$dir/kube-scheduler.log" 2>&1 &
  pids+=($!)
}

node_proxy_up() {
  "$bin/kube-proxy" --kubeconfig "$dir/kubeconfig-controller-manager" --hostname-override "$node_name" \
    --proxy-mode iptables --cluster-cidr "$pod_cidr" --conntrack-max-per-core 0 \
    --iptables-localhost-nodeports=false \
    --healthz-bind-address "127.0.0.1:$(free_port)" --metrics-bind-address "127.0.0.1:$(free_port)" \
    > "$dir/kube-proxy.log" 2>&1 &
  pids+=($!)
}

# Everything of the node, once the API server answers.
node_up() {
  node_dir="$dir/node"
  mkdir -p "$node_dir"
  node_input_rules "$api_port"
  node_containerd_up
  node_images
  node_kubelet_up
  node_scheduler_up
  node_proxy_up
  local deadline=$((SECONDS + 120))
  until "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get node "$node_name" \
      -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True; do
    ((SECONDS < deadline)) || { tail -n 30 "$dir/kubelet.log" >&2; node_fail "node $node_name not Ready after 120s"; }
    sleep 0.5
  done
}

# Stops the kubelet and every container (while containerd still runs); the processes of the
# node are then stopped with the rest, and node_cleanup removes what they left.
node_stop_workloads() {
  # Pods deleted through the API while the kubelet runs: it stops their sandboxes, so CNI takes
  # their network down (killing containers under it would leave namespaces and veths).
  if [[ -n "${dir:-}" && -e "$dir/kubeconfig" ]] && pgrep -f "^$bin/kubelet " > /dev/null; then
    "$bin/kubectl" --kubeconfig "$dir/kubeconfig" delete pods --all --all-namespaces --grace-period=0 --force \
      --wait=false > /dev/null 2>&1 || true
    local deadline=$((SECONDS + 20))
    while ((SECONDS < deadline)) && [[ -n "$(node_ctr containers ls -q 2>/dev/null)" ]]; do sleep 0.5; done
  fi
  local p
  for p in $(pgrep -f "^$bin/kubelet "); do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  [[ -S "$containerd_sock" ]] || return 0
  local task
  for task in $(node_ctr tasks ls -q 2>/dev/null); do
    node_ctr tasks kill -s SIGKILL "$task" > /dev/null 2>&1 || true
  done
  for task in $(node_ctr tasks ls -q 2>/dev/null); do node_ctr tasks delete -f "$task" > /dev/null 2>&1 || true; done
  for task in $(node_ctr containers ls -q 2>/dev/null); do node_ctr containers rm "$task" > /dev/null 2>&1 || true; done
}

# Removes everything the node made outside $dir: safe to run again, and where no node ran.
node_cleanup() {
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $containerd_sock" 2>/dev/null || true
  "$bin/kube-proxy" --cleanup > /dev/null 2>&1 || true
  local ipt table chain
  for ipt in iptables ip6tables; do
    "$ipt" -D INPUT -j KUBE-FIREWALL > /dev/null 2>&1 || true
    "$ipt" -D OUTPUT -j KUBE-FIREWALL > /dev/null 2>&1 || true
    for table in filter nat mangle; do
      for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-PROXY-CANARY; do
        "$ipt" -t "$table" -F "$chain" > /dev/null 2>&1 || true
        "$ipt" -t "$table" -X "$chain" > /dev/null 2>&1 || true
      done
    done
  done
  node_network_down
  local m
  for m in $(awk '{print $2}' /proc/mounts | grep -E "^(/var/lib/kubelet|$containerd_root|$containerd_state)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf /var/lib/kubelet "$containerd_root" "$containerd_state" /var/lib/cni /var/log/pods /var/log/containers
  # The runc shim keeps its sockets under /run/containerd whatever the state directory.
  rm -rf /run/containerd/runc/k8s.io /run/containerd/s
  rmdir /run/containerd/runc /run/containerd 2>/dev/null || true
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
}
