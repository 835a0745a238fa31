#!/usr/bin/env python3
"""`make scale`: the operator at scale on the real API server (tests/controlplane).

Starts a control plane, installs the chart's RBAC and role mapping, runs `dvo run` (operator and
webhook, release build, the chart's ServiceAccount token), creates POLICIES DeploymentPolicies
and AGENTS AgentDeployments (as the developer identity, through the webhook), and reports each
figure of issue 13 next to its goal:

  - time until every AgentDeployment is Deployed while they are created, and after a restart
    until every one is reconciled once (operator time, objects already there);
  - peak RSS of that process (the chart's memory limit must hold with room);
  - API requests per object (first rollout, and a restart's resync), writes and LISTs on a
    no-op resync;
  - reconciles caused by a policy change (only the objects in its scope);
  - admission latency (server side, from the operator's histogram) while objects are created
    and while a restarted operator resyncs.

Usage: scripts/scale.py [--agents N] [--policies P] [--profile release|debug]
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(HERE, "tests/controlplane/bin")
STATE = os.path.join(HERE, ".run/scale")
AGENTS_PER_NAMESPACE = 1000
GOALS = {
    "steady": 60.0,
    "rss_mib": 128.0,
    "requests_per_object": 3.0,
    "approval_p50_ms": 100.0,
    "approval_p99_ms": 300.0,
}
APPROVALS = int(os.environ.get("SCALE_APPROVALS", 120))


def log(*args):
    print("scale:", *args, file=sys.stderr, flush=True)


class Api:
    """A tiny API client for one identity (HTTP/1.1 keep-alive, one connection per thread)."""

    def __init__(self, server, ca, token):
        self.url = urllib.parse.urlparse(server)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.token = token
        self.local = threading.local()

    def request(self, method, path, body=None, content_type="application/json"):
        for attempt in range(5):
            conn = getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection(self.url.hostname, self.url.port, context=self.ctx, timeout=60)
                self.local.conn = conn
            try:
                headers = {"Authorization": "Bearer " + self.token, "Accept": "application/json"}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["Content-Type"] = content_type
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                text = resp.read()
                return resp.status, (json.loads(text) if text else None)
            except (http.client.HTTPException, OSError):
                self.local.conn = None
                time.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"{method} {path}: no answer")


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def metrics(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def counter(m, prefix):
    return sum(v for k, v in m.items() if k.startswith(prefix))


def requests_by_verb(m, leases=True):
    """Requests by "verb resource" (the leader Lease's renewals left out unless `leases`)."""
    out = {}
    for k, v in m.items():
        hit = re.match(r'dvo_api_requests_total\{verb="([a-z]+)",resource="([a-z]*)"\}', k)
        if hit and (leases or hit.group(2) != "leases"):
            key = f"{hit.group(1)} {hit.group(2)}"
            out[key] = out.get(key, 0) + v
    return out


def diff(after, before):
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def reads(by):
    return sum(v for k, v in by.items() if k.split()[0] in ("get", "list"))


def histogram_quantile(m, name, q):
    buckets = []
    for k, v in m.items():
        hit = re.match(name + r'_bucket\{le="([^"]+)"\}', k)
        if hit:
            le = float("inf") if hit.group(1) == "+Inf" else float(hit.group(1))
            buckets.append((le, v))
    buckets.sort()
    if not buckets or buckets[-1][1] == 0:
        return None
    total = buckets[-1][1]
    for le, v in buckets:
        if v >= q * total:
            return le
    return None


def hist_diff(after, before, name):
    return {k: v - before.get(k, 0) for k, v in after.items() if k.startswith(name + "_bucket")}


def rss_peak_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def policies(n):
    """A realistic mix: most scoped to other environments, conditions with a regex and a numeric
    compare, windows and blackouts, some approvals."""
    docs = []
    for i in range(n):
        kind = i % 10
        spec = {"priority": i, "timeZone": "Europe/Berlin"}
        if kind < 3:
            spec.update(scope={"environments": ["production"]}, action="RequireApproval",
                        approval={"roles": ["release_manager"], "minApprovals": 1 + i % 2},
                        conditions=[{"field": "replicas", "operator": "GreaterThan", "value": -1}])
        elif kind < 5:
            spec.update(scope={"environments": ["staging", "production"]}, action="Warn", message=f"p{i}",
                        windows=[{"days": ["monday", "tuesday", "wednesday", "thursday", "friday"], "start": "06:00", "end": "22:00"}])
        elif kind < 8:
            spec.update(scope={"environments": ["development"]}, action="AuditOnly", message=f"p{i}",
                        conditions=[{"field": "agent", "operator": "Matches", "value": f"agent-{i % 7}[0-9]*"},
                                    {"field": "replicas", "operator": "LessThan", "value": 100},
                                    {"field": "context.risk", "operator": "GreaterThan", "value": 5}],
                        match="Any")
        elif kind < 9:
            spec.update(scope={"environments": ["development"], "agents": [f"agent-{i}"]}, action="Warn",
                        message=f"agent-{i} is watched")
        else:
            spec.update(scope={"agents": ["nobody"]}, action="Deny", message="never")
        docs.append({"apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy",
                     "metadata": {"name": f"scale-{i:04d}"}, "spec": spec})
    return docs


def agent(i):
    return {"apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment",
            "metadata": {"name": f"agent-{i:05d}", "labels": {"team": f"t{i % 20}"}},
            "spec": {"agent": f"agent-{i % 100}", "platform": "langchain", "environment": "development",
                     "replicas": 0, "steps": {"healthCheck": False},
                     "context": {"risk": i % 10, "change_ticket": f"CHG-{i}"},
                     "template": {"metadata": {"labels": {"app": f"agent-{i % 100}"}},
                                  "spec": {"containers": [{"name": "agent", "image": f"registry.local/agent:{i % 3}"}]}}}}


def wait_all(api, namespaces, n, phase, proc, deadline_s=3600):
    """Polls (every 2 s) until all `n` AgentDeployments are in `phase`; returns the time."""
    start = time.time()
    while time.time() - start < deadline_s:
        if proc.poll() is not None:
            raise RuntimeError("the operator exited")
        if phases(api, namespaces).get(phase, 0) >= n:
            return time.time()
        time.sleep(2)
    raise RuntimeError(f"not all {phase}")


def phases(api, namespaces):
    out = {}
    for ns in namespaces:
        cont = ""
        while True:
            path = f"/apis/dvo.caat.io/v1alpha1/namespaces/{ns}/agentdeployments?limit=500" + (f"&continue={cont}" if cont else "")
            status, body = api.request("GET", path)
            assert status == 200, body
            for item in body["items"]:
                phase = (item.get("status") or {}).get("phase", "(none)")
                out[phase] = out.get(phase, 0) + 1
            cont = body["metadata"].get("continue")
            if not cont:
                break
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=int(os.environ.get("SCALE_AGENTS", 10000)))
    ap.add_argument("--policies", type=int, default=int(os.environ.get("SCALE_POLICIES", 100)))
    ap.add_argument("--profile", default=os.environ.get("SCALE_PROFILE", "release"))
    args = ap.parse_args()
    os.makedirs(STATE, exist_ok=True)
    procs = []

    def cleanup(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        results = scale(args, procs)
    finally:
        cleanup()
    print(json.dumps(results, indent=2))


def scale(args, procs):
    results = {"agents": args.agents, "policies": args.policies, "profile": args.profile}
    build = ["cargo", "build", "--locked", "--quiet", "--bin", "dvo"] + (["--release"] if args.profile == "release" else [])
    log("building", " ".join(build))
    subprocess.run(build, check=True, cwd=HERE)
    dvo = os.path.join(HERE, "target", "release" if args.profile == "release" else "debug", "dvo")

    cluster = os.environ.get("DVO_TEST_CLUSTER_DIR")
    if not cluster:
        cluster = tempfile.mkdtemp(prefix="dvo-scale-")
        log("starting a control plane in", cluster)
        # Without the Deployment and ReplicaSet controllers: their status updates of 10,000
        # Deployments would trickle in for many minutes, and what is measured is the operator.
        controllers = "garbage-collector-controller,clusterrole-aggregation-controller,job-controller,namespace-controller,serviceaccount-controller,root-ca-certificate-publisher-controller"
        procs.append(subprocess.Popen([os.path.join(HERE, "tests/controlplane/cluster.sh"), "up", "--dir", cluster,
                                       "--watch-pid", str(os.getpid())], stdout=subprocess.DEVNULL,
                                      env=dict(os.environ, DVO_CONTROLLERS=controllers),
                                      stderr=open(os.path.join(STATE, "cluster.log"), "w")))
        while not os.path.exists(os.path.join(cluster, "ready")):
            if procs[0].poll() is not None:
                raise RuntimeError("the control plane exited; see .run/scale/cluster.log")
            time.sleep(0.2)
    env = dict(os.environ, KUBECONFIG=os.path.join(cluster, "kubeconfig"))
    kubectl = os.path.join(BIN, "kubectl")
    run([kubectl, "apply", "--server-side", "-f", os.path.join(HERE, "crds/")], env=env)
    values = os.path.join(STATE, "values.yaml")
    with open(values, "w") as f:
        f.write("replicaCount: 0\nroleMapping:\n")
        for line in open(os.path.join(HERE, "examples/role-mapping.yaml")):
            if not line.startswith("#"):
                f.write("  " + line)
    helm_env = dict(env, HELM_CACHE_HOME=STATE + "/helm", HELM_CONFIG_HOME=STATE + "/helm", HELM_DATA_HOME=STATE + "/helm")
    run([os.path.join(BIN, "helm"), "upgrade", "--install", "dvo", os.path.join(HERE, "charts/dvo-operator"),
         "--namespace", "dvo-system", "--create-namespace", "--values", values], env=helm_env)
    token = run([kubectl, "-n", "dvo-system", "create", "token", "dvo-operator", "--duration=24h"], env=env).strip()
    op_kubeconfig = os.path.join(STATE, "kubeconfig-operator")
    with open(op_kubeconfig, "w") as f:
        f.write(run([kubectl, "config", "view", "--raw", "--minify"], env=env))
    # As the chart runs it (see its Deployment).
    op_env = dict(os.environ, KUBECONFIG=op_kubeconfig, RUST_LOG="info,kube=warn", MALLOC_ARENA_MAX="1", MALLOC_MMAP_THRESHOLD_="131072")
    run([kubectl, "config", "set-credentials", "operator", "--token=" + token], env=op_env)
    run([kubectl, "config", "set-context", "--current", "--user=operator"], env=op_env)

    server = json.loads(run([kubectl, "config", "view", "--raw", "--minify", "-o", "json"], env=env))["clusters"][0]["cluster"]["server"]
    ca = os.path.join(cluster, "pki/ca.crt")
    admin = Api(server, ca, open(os.path.join(cluster, "pki/token-admin")).read().strip())
    developer = Api(server, ca, open(os.path.join(cluster, "pki/token-developer")).read().strip())
    health_port, webhook_port = free_port(), free_port()

    def start_operator(name):
        out = open(os.path.join(STATE, f"operator-{name}.log"), "w")
        p = subprocess.Popen([dvo, "run", "--namespace", "dvo-system", "--health-addr", f"127.0.0.1:{health_port}",
                              "--webhook-addr", f"127.0.0.1:{webhook_port}", "--webhook-url", f"https://127.0.0.1:{webhook_port}",
                              "--webhook-client-ca", os.path.join(cluster, "pki/webhook-client-ca.crt")],
                             env=op_env, stdout=out, stderr=out)
        procs.append(p)
        return p

    def ready(p):
        while True:
            if p.poll() is not None:
                raise RuntimeError("the operator exited; see .run/scale/operator-*.log")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", health_port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)

    # 1. Objects created through the webhook while the operator rolls them out.
    op = start_operator("first")
    ready(op)
    log(f"creating {args.policies} policies")
    for doc in policies(args.policies):
        status, body = admin.request("POST", "/apis/dvo.caat.io/v1alpha1/deploymentpolicies", doc)
        assert status in (201, 409), body
    namespaces = [f"scale-{k}" for k in range((args.agents + AGENTS_PER_NAMESPACE - 1) // AGENTS_PER_NAMESPACE)]
    for ns in namespaces:
        admin.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # People get the built-in `edit` role (the chart aggregates our kinds into it).
    for ns in namespaces:
        admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "developers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": "dev-dana"}]})
    time.sleep(1)  # RBAC propagation in the API server's authorizer cache (not a synchronisation of ours)
    m0 = metrics(health_port)
    t0 = time.time()
    log(f"creating {args.agents} AgentDeployments as dev-dana")

    def create(i):
        ns = namespaces[i // AGENTS_PER_NAMESPACE]
        status, body = developer.request("POST", f"/apis/dvo.caat.io/v1alpha1/namespaces/{ns}/agentdeployments", agent(i))
        if status not in (201, 409):
            raise RuntimeError(f"create agent-{i}: {status} {body}")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(args.agents)))
    created = time.time() - t0
    steady = wait_all(admin, namespaces, args.agents, "Deployed", op) - t0
    m1 = metrics(health_port)
    by_verb = diff(requests_by_verb(m1), requests_by_verb(m0))
    seen = phases(admin, namespaces)
    results["first"] = {
        "create_seconds": round(created, 1),
        "all_deployed_after_start_of_creation_seconds": round(steady, 1),
        "phases": seen,
        "api_requests_per_object": round(sum(by_verb.values()) / args.agents, 2),
        "api_reads_per_object": round(reads(by_verb) / args.agents, 2),
        "api_requests_by_verb": by_verb,
        "reconciles_per_object": round((counter(m1, 'dvo_reconciles_total{kind="AgentDeployment"}') - counter(m0, 'dvo_reconciles_total{kind="AgentDeployment"}')) / args.agents, 2),
        "admission_p50_s": histogram_quantile(hist_diff(m1, m0, "dvo_admission_seconds"), "dvo_admission_seconds", 0.5),
        "admission_p99_s": histogram_quantile(hist_diff(m1, m0, "dvo_admission_seconds"), "dvo_admission_seconds", 0.99),
        "peak_rss_mib": round(rss_peak_mib(op.pid), 1),
    }
    log("first rollout:", json.dumps(results["first"]))

    # 2. Nothing changes for 30 s: what the periodic resync (every 300 s per object) costs.
    ma = metrics(health_port)
    time.sleep(30)  # the window measured, not a synchronisation
    mb = metrics(health_port)
    results["idle_30s_requests_by_verb"] = diff(requests_by_verb(mb, leases=False), requests_by_verb(ma, leases=False))

    # 3. A policy change: only the objects in its scope are reconciled (the resync's own rate,
    # measured just before, is subtracted).
    target = 8  # scale-0008 is scoped to agent-8 (every 100th AgentDeployment)
    in_scope = len([i for i in range(args.agents) if i % 100 == target])
    idle_rate = (counter(mb, 'dvo_reconciles_total{kind="AgentDeployment"}') - counter(ma, 'dvo_reconciles_total{kind="AgentDeployment"}')) / 30.0
    mc0 = metrics(health_port)
    before = counter(mc0, 'dvo_reconciles_total{kind="AgentDeployment"}')
    tc = time.time()
    status, body = admin.request("PATCH", f"/apis/dvo.caat.io/v1alpha1/deploymentpolicies/scale-{target:04d}",
                                 [{"op": "replace", "path": "/spec/message", "value": "changed"}], "application/json-patch+json")
    assert status == 200, body
    time.sleep(10)  # the window measured
    mc1 = metrics(health_port)
    after = counter(mc1, 'dvo_reconciles_total{kind="AgentDeployment"}')
    # API requests of the change per object in its scope, less what the resync costs meanwhile.
    window = time.time() - tc
    idle_requests = sum(results["idle_30s_requests_by_verb"].values()) * window / 30.0
    change = diff(requests_by_verb(mc1, leases=False), requests_by_verb(mc0, leases=False))
    results["policy_change"] = {"in_scope": in_scope, "reconciles_in_10s": after - before,
                                "resync_reconciles_expected_in_10s": round(idle_rate * window, 1),
                                "api_requests_by_verb": change,
                                "api_requests_per_object_in_scope": round(max(0.0, sum(change.values()) - idle_requests) / in_scope, 2)}

    # 4. A restart: the new process resyncs everything; admission is measured meanwhile.
    op.send_signal(signal.SIGTERM)
    op.wait(timeout=60)
    t1 = time.time()
    op = start_operator("restart")
    stop_probe = threading.Event()
    latencies = []

    def probe():
        # Dry-run creates at ~200/s through the API server and our webhook.
        i = 0
        while not stop_probe.is_set():
            t = time.time()
            ns = namespaces[0]
            status, _ = developer.request("POST", f"/apis/dvo.caat.io/v1alpha1/namespaces/{ns}/agentdeployments?dryRun=All", agent(100000 + i))
            latencies.append((time.time() - t, status))
            i += 1
            time.sleep(max(0, 0.005 - (time.time() - t)))
    ready(op)
    mr0 = metrics(health_port)
    probes = [threading.Thread(target=probe) for _ in range(2)]
    for p in probes:
        p.start()
    # Steady: every object reconciled once since the start (nothing changed meanwhile).
    while counter(metrics(health_port), 'dvo_reconciles_total{kind="AgentDeployment"}') < args.agents:
        if op.poll() is not None:
            raise RuntimeError("the operator exited")
        time.sleep(0.2)
    steady2 = time.time() - t1
    stop_probe.set()
    for p in probes:
        p.join()
    mr1 = metrics(health_port)
    resync = requests_by_verb(mr1, leases=False)
    ok = sorted(l for l, s in latencies if s == 201)
    results["restart"] = {
        "steady_after_start_seconds": round(steady2, 1),
        "api_requests_by_verb": resync,
        "api_requests_per_object": round(sum(resync.values()) / args.agents, 2),
        "api_reads_per_object": round(reads(resync) / args.agents, 2),
        "peak_rss_mib": round(rss_peak_mib(op.pid), 1),
        "admission_probes": len(latencies),
        "admission_refused_or_failed": len([1 for _, s in latencies if s != 201]),
        "admission_client_p99_s": round(ok[int(len(ok) * 0.99) - 1], 4) if ok else None,
        "admission_webhook_p99_s": histogram_quantile(hist_diff(mr1, mr0, "dvo_admission_seconds"), "dvo_admission_seconds", 0.99),
    }
    log("restart:", json.dumps(results["restart"]))

    # 5. Approvals with 10,000 objects in the caches: from the approving annotation (its PATCH
    # answered) to the Deployment of the approved spec, one at a time.
    results["approval"] = approvals(admin, developer, Api(server, ca, open(os.path.join(cluster, "pki/token-release-manager-1")).read().strip()), op)
    log("approval:", json.dumps(results["approval"]))
    results["goals"] = {
        "steady_within_60s_of_operator_time": results["restart"]["steady_after_start_seconds"] <= GOALS["steady"],
        "peak_rss_below_128MiB": max(results["first"]["peak_rss_mib"], results["restart"]["peak_rss_mib"]) < GOALS["rss_mib"],
        "at_most_3_reads_per_object_per_change": results["first"]["api_reads_per_object"] <= GOALS["requests_per_object"],
        "at_most_3_requests_per_object_per_policy_change": results["policy_change"]["api_requests_per_object_in_scope"] <= GOALS["requests_per_object"],
        "no_writes_or_lists_when_idle": not any(k.split()[0] in ("list", "patch", "update", "create") and not k.endswith("configmaps")
                                                for k in results["idle_30s_requests_by_verb"]),
        "policy_change_reconciles_only_its_scope": results["policy_change"]["reconciles_in_10s"]
            <= results["policy_change"]["in_scope"] + 2 * results["policy_change"]["resync_reconciles_expected_in_10s"] + 5,
        "annotate_to_rollout_p50_below_100ms": results["approval"]["p50_ms"] < GOALS["approval_p50_ms"],
        "annotate_to_rollout_p99_below_300ms": results["approval"]["p99_ms"] < GOALS["approval_p99_ms"],
    }
    return results


def approvals(admin, developer, approver, op, n=APPROVALS):
    """Creates `n` AgentDeployments that a policy holds for one release manager's approval,
    approves each with the annotation `kubectl annotate` sets, and times each from the answered
    PATCH to the Deployment of the approved spec (polled every 5 ms)."""
    ns = "scale-approvals"
    admin.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for user, name in (("dev-dana", "developers"), ("rosa-release", "release-managers")):
        admin.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
            "subjects": [{"kind": "User", "name": user}]})
    status, body = admin.request("POST", "/apis/dvo.caat.io/v1alpha1/deploymentpolicies", {
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": "scale-approvals"},
        "spec": {"priority": 1, "action": "RequireApproval", "scope": {"namespaces": [ns]},
                 "approval": {"roles": ["release_manager"]}}})
    assert status in (201, 409), body
    time.sleep(1)  # RBAC propagation in the API server's authorizer cache (not a synchronisation of ours)

    def until(what, check, deadline_s=60, every=0.005):
        start = time.time()
        while time.time() - start < deadline_s:
            if op.poll() is not None:
                raise RuntimeError("the operator exited")
            found = check()
            if found:
                return found
            time.sleep(every)
        raise RuntimeError(f"timed out waiting for {what}")

    latencies = []
    base = f"/apis/dvo.caat.io/v1alpha1/namespaces/{ns}"
    for i in range(n):
        name = f"approve-{i:04d}"
        doc = agent(i)
        doc["metadata"]["name"] = name
        status, body = developer.request("POST", f"{base}/agentdeployments", doc)
        if status not in (201, 409):
            raise RuntimeError(f"create {name}: {status} {body}")

        def request_name():
            _, ad = admin.request("GET", f"{base}/agentdeployments/{name}")
            st = (ad or {}).get("status") or {}
            return st.get("phase") == "PendingApproval" and st.get("approvalRequest")
        apr = until(f"the ApprovalRequest of {name}", request_name, every=0.02)
        status, body = approver.request("PATCH", f"{base}/approvalrequests/{apr}",
                                        {"metadata": {"annotations": {"dvo.caat.io/approve": "scale run"}}},
                                        "application/merge-patch+json")
        if status != 200:
            raise RuntimeError(f"approve {apr}: {status} {body}")
        approved = time.time()

        def deployment():
            status, _ = admin.request("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
            return status == 200
        until(f"the Deployment of {name}", deployment)
        latencies.append(time.time() - approved)
    latencies.sort()
    return {
        "approvals": n,
        "p50_ms": round(latencies[n // 2] * 1000, 1),
        "p99_ms": round(latencies[max(0, int(n * 0.99) - 1)] * 1000, 1),
        "max_ms": round(latencies[-1] * 1000, 1),
    }


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    main()
