#!/usr/bin/env python3
"""`make e2e`: dvo-operator as users run it, on a real node (tests/controlplane/cluster.sh --node).

The operator's image is made from the built `dvo` binary (scripts/image.py) and imported into
the node; the chart is installed with `helm install` as the README says (two replicas); people
act with kubectl as the control plane's test identities; the workloads are real pods of the
workload image (a static HTTP server that can also crash). Nothing is patched to pretend: pods
start, become Ready, crash or fail to pull, and the operator sees it.

Root only (the node needs it). Usage: tests/e2e/run.py [-v] [unittest arguments]
Environment: DVO_E2E_BINARY (default target/debug/dvo), DVO_E2E_KEEP=1 keeps the cluster up at
the end and prints its KUBECONFIG.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.join(REPO, "tests/controlplane/bin")
BINARY = os.environ.get("DVO_E2E_BINARY", os.path.join(REPO, "target/debug/dvo"))
IMAGE = "localhost/dvo-operator:e2e"
WORKLOAD = "localhost/dvo-workload:1"
NS = "agents"


def log(*args):
    print("e2e:", *args, file=sys.stderr, flush=True)


class Cluster:
    """The control plane with a node, started once for the suite."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dvo-e2e-")
        self.log = open(self.dir + ".log", "w")
        self.proc = subprocess.Popen(
            [os.path.join(REPO, "tests/controlplane/cluster.sh"), "up", "--node", "--dir", self.dir,
             "--watch-pid", str(os.getpid())],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)
        deadline = time.time() + 30 * 60  # a cold start builds the binaries first
        while not os.path.exists(os.path.join(self.dir, "ready")):
            if self.proc.poll() is not None:
                raise RuntimeError("the control plane exited; see " + self.log.name + ":\n" + open(self.log.name).read()[-4000:])
            if time.time() > deadline:
                raise RuntimeError("the control plane was not ready in time")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=120)
        self.log.close()

    def kubectl(self, identity, *args, check=True, stdin=None):
        out = subprocess.run([os.path.join(BIN, "kubectl"), "--kubeconfig", os.path.join(self.dir, "kubeconfig-" + identity), *args],
                             input=stdin, capture_output=True, text=True)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} as {identity}: {out.stderr.strip()}")
        return out

    def json(self, *args):
        return json.loads(self.kubectl("admin", *args, "-o", "json").stdout)

    def show(self, title):
        """What a user sees: pods, AgentDeployments and ApprovalRequests."""
        out = self.kubectl("admin", "-n", NS, "get", "pods,adep,apr", "-o", "wide", check=False).stdout
        log(f"--- {title}\n{out}")

    def until(self, what, check, timeout=120, every=0.5):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = check()
            if last:
                return last
            time.sleep(every)
        self.show(f"timed out: {what}")
        raise AssertionError(f"timed out waiting for {what} (last: {last})")

    def operator_image(self, name):
        """The operator's image, made from the binary under test, in the node's image store."""
        archive = os.path.join(self.dir, name.rsplit(":", 1)[-1] + ".tar")
        subprocess.run([sys.executable, os.path.join(REPO, "scripts/image.py"), "--binary", BINARY, "--out", archive,
                        "--name", name], check=True, capture_output=True)
        subprocess.run(["ctr", "--address", "/run/dvo-containerd/containerd.sock", "-n", "k8s.io", "images", "import",
                        "--all-platforms", archive], check=True, capture_output=True)

    def helm(self, *args):
        env = dict(os.environ, KUBECONFIG=os.path.join(self.dir, "kubeconfig"),
                   HELM_CACHE_HOME=self.dir + "/helm", HELM_CONFIG_HOME=self.dir + "/helm", HELM_DATA_HOME=self.dir + "/helm")
        out = subprocess.run([os.path.join(BIN, "helm"), *args], capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout


def agent(name, environment, env=None, image=WORKLOAD, deadline=20, steps=None):
    container = {"name": "agent", "image": image, "imagePullPolicy": "Never",
                 "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                 "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8080}, "periodSeconds": 1}}
    return json.dumps({
        "apiVersion": "dvo.caat.io/v1alpha1", "kind": "AgentDeployment", "metadata": {"name": name, "namespace": NS},
        "spec": {"agent": "GHA", "platform": "langchain", "environment": environment, "progressDeadlineSeconds": deadline,
                 "steps": dict({"healthCheck": True, "autoRollback": True}, **(steps or {})),
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}}})


class EndToEnd(unittest.TestCase):
    c: Cluster

    @classmethod
    def setUpClass(cls):
        started = time.time()
        cls.c = c = Cluster()
        log(f"control plane and node ready in {time.time() - started:.1f}s ({c.dir})")
        c.operator_image(IMAGE)
        values = os.path.join(c.dir, "values.yaml")
        with open(values, "w") as f:
            f.write("replicaCount: 2\nimage: {repository: localhost/dvo-operator, tag: e2e, pullPolicy: Never}\nroleMapping:\n")
            with open(os.path.join(REPO, "examples/role-mapping.yaml")) as mapping:
                f.writelines("  " + line for line in mapping if not line.startswith("#"))
        # As the README says: CRDs first (server-side), then the chart.
        c.kubectl("admin", "apply", "--server-side", "-f", os.path.join(REPO, "charts/dvo-operator/crds/"))
        c.helm("install", "dvo", os.path.join(REPO, "charts/dvo-operator"), "--namespace", "dvo-system",
               "--create-namespace", "--values", values, "--wait", "--timeout", "180s")
        c.kubectl("admin", "create", "namespace", NS)
        for user, name in (("dev-dana", "developers"), ("rosa-release", "release-managers"), ("raj-release", "release-managers-2")):
            c.kubectl("admin", "-n", NS, "create", "rolebinding", name, "--clusterrole=edit", "--user=" + user)
        # The API server reaches the webhook through the chart's Service once kube-proxy has its
        # rules: a server-side dry run as the developer is answered (and stamped) by our webhook.
        c.until("the webhook through its Service", lambda: '"dvo.caat.io/requester"' in c.kubectl(
            "developer", "create", "--dry-run=server", "-o", "json", "-f", "-", check=False,
            stdin=agent("probe", "development")).stdout, timeout=60)
        # Production needs one release manager's approval.
        c.kubectl("admin", "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "dvo.caat.io/v1alpha1", "kind": "DeploymentPolicy", "metadata": {"name": "production-approval"},
            "spec": {"priority": 10, "action": "RequireApproval", "scope": {"environments": ["production"]},
                     "approval": {"roles": ["release_manager"]}}}))
        log(f"chart installed and answering in {time.time() - started:.1f}s")

    @classmethod
    def tearDownClass(cls):
        if os.environ.get("DVO_E2E_KEEP"):
            log(f"kept: export KUBECONFIG={cls.c.dir}/kubeconfig")
            cls.c.proc.wait()
        cls.c.stop()

    def pods_of(self, name):
        return [p for p in self.c.json("-n", NS, "get", "pods", "-l", "app=" + name)["items"]
                if not p["metadata"].get("deletionTimestamp")]

    def settled(self, name):
        """The phase of the current generation (None while the operator has not decided it)."""
        phase, ad = self.phase(name)
        current = ad.get("status", {}).get("observedGeneration") == ad["metadata"]["generation"]
        return phase if current and phase != "Progressing" else None

    def phase(self, name):
        ad = self.c.json("-n", NS, "get", "adep", name)
        return ad.get("status", {}).get("phase"), ad

    def audit(self):
        out = subprocess.run([BINARY, "audit", "export", "--format", "jsonl"], capture_output=True, text=True,
                             env=dict(os.environ, KUBECONFIG=os.path.join(self.c.dir, "kubeconfig")), check=True)
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    def test_1_the_chart_runs_two_ready_replicas_and_one_leads(self):
        pods = self.c.json("-n", "dvo-system", "get", "pods", "-l", "app.kubernetes.io/name=dvo-operator")["items"]
        self.assertEqual(len(pods), 2)
        for p in pods:
            ready = [x for x in p["status"]["conditions"] if x["type"] == "Ready"]
            self.assertEqual(ready[0]["status"], "True", p["metadata"]["name"])
            self.assertEqual(p["spec"]["containers"][0]["image"], IMAGE)
        holder = self.c.json("-n", "dvo-system", "get", "lease", "dvo-operator-leader")["spec"]["holderIdentity"]
        self.assertIn(holder, [p["metadata"]["name"] for p in pods])
        # The pod security the chart asks for holds at run time, read from the kernel for the
        # operator's processes on this node: uid and gid 65532, no capabilities, no new
        # privileges, seccomp filtering, and a read-only root.
        def read(path):
            with open(path, "rb") as f:
                return f.read().decode(errors="replace")
        running = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if read(f"/proc/{pid}/cmdline").split("\0")[:2] != ["/usr/local/bin/dvo", "run"]:
                    continue
                status = dict(line.split(":", 1) for line in read(f"/proc/{pid}/status").splitlines() if ":" in line)
                root = [m.split() for m in read(f"/proc/{pid}/mountinfo").splitlines() if m.split()[4] == "/"]
            except OSError:
                continue  # gone meanwhile
            running.append(pid)
            self.assertEqual(status["Uid"].split(), ["65532"] * 4, pid)
            self.assertEqual(status["Gid"].split(), ["65532"] * 4, pid)
            self.assertEqual(int(status["CapEff"].strip(), 16), 0, pid)
            self.assertEqual(status["NoNewPrivs"].strip(), "1", pid)
            self.assertEqual(status["Seccomp"].strip(), "2", pid)
            self.assertTrue(root and "ro" in root[0][5].split(","), f"{pid}: root mounted {root}")
        self.assertEqual(len(running), 2, "the two replicas' processes")

    def test_2_production_waits_for_approval_then_runs_exactly_the_approved_image(self):
        c = self.c
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-prod", "production", {"VERSION": "v1"}))
        c.until("PendingApproval", lambda: self.phase("gha-prod")[0] == "PendingApproval")
        c.show("held for approval")
        time.sleep(3)  # the window in which nothing may start (not a synchronisation)
        self.assertEqual(self.pods_of("gha-prod"), [], "a pod started before approval")
        apr = self.phase("gha-prod")[1]["status"]["approvalRequest"]
        c.kubectl("release-manager-1", "-n", NS, "annotate", "apr", apr, "dvo.caat.io/approve=e2e: looks good")
        c.until("Deployed", lambda: self.phase("gha-prod")[0] == "Deployed", timeout=120)
        pods = self.pods_of("gha-prod")
        c.show("approved and deployed")
        self.assertTrue(pods, "Deployed without pods")
        # What runs is the spec the approval was given for: the request's digest is the
        # deployed one, and the Deployment (and so its pods) carries it.
        st = self.phase("gha-prod")[1]["status"]
        approved = c.json("-n", NS, "get", "apr", apr)["spec"]["specDigest"]
        self.assertEqual(st["deployedDigest"], approved)
        deployment = c.json("-n", NS, "get", "deployment", "gha-prod")
        self.assertEqual(deployment["metadata"]["annotations"]["dvo.caat.io/spec-digest"], approved)
        for p in pods:
            self.assertEqual(p["status"]["phase"], "Running")
            self.assertTrue(all(s["ready"] for s in p["status"]["containerStatuses"]), "Deployed before its pods were Ready")
            self.assertEqual([x["image"] for x in p["spec"]["containers"]], [WORKLOAD])
            self.assertIn({"name": "VERSION", "value": "v1"}, p["spec"]["containers"][0]["env"])

    def test_3_a_crashing_or_unpullable_rollout_fails_and_rolls_back_to_the_healthy_spec(self):
        c = self.c
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-dev", "development", {"VERSION": "v1"}))
        c.until("v1 Deployed", lambda: self.settled("gha-dev") == "Deployed")
        healthy = self.phase("gha-dev")[1]["status"]["healthyDigest"]
        for why, change in (("crash", {"env": {"VERSION": "v2", "MODE": "crash"}}),
                            ("a missing image", {"env": {"VERSION": "v3"}, "image": "localhost/not-there:1"})):
            c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-dev", "development", **change))
            c.until(f"{why}: Failed", lambda: self.settled("gha-dev") == "Failed", timeout=180)
            c.show(f"{why}: failed and rolled back")
            st = self.phase("gha-dev")[1]["status"]
            self.assertEqual(st["deployedDigest"], healthy, "rolled back to the last healthy spec")

            def healthy_again():
                pods = self.pods_of("gha-dev")
                return pods and all(p["status"]["phase"] == "Running" and all(s["ready"] for s in p["status"].get("containerStatuses", []))
                                    and p["spec"]["containers"][0]["image"] == WORKLOAD
                                    and not [e for e in p["spec"]["containers"][0].get("env", []) if e["name"] == "MODE"]
                                    for p in pods)
            c.until(f"{why}: the healthy pods running again", healthy_again, timeout=120)
        events = [(e["event_type"], e["status"]) for e in self.audit() if e["resource"] == f"{NS}/gha-dev"]
        kinds = [k for k, _ in events]
        self.assertIn("deployment_failed", kinds)
        self.assertIn("rollback_started", kinds)
        self.assertIn("rollback_completed", kinds)
        self.assertLess(kinds.index("rollback_started"), kinds.index("rollback_completed"))
        # The change report tells the failed changes and their rollbacks, from the same log.
        out = subprocess.run([BINARY, "audit", "report", "--environment", "development", "--in-namespace", NS,
                              "-o", "json"], capture_output=True, text=True,
                             env=dict(os.environ, KUBECONFIG=os.path.join(self.c.dir, "kubeconfig")), check=True)
        report = json.loads(out.stdout)
        self.assertTrue(report["intact"], report["verification"])
        failed = [ch for ch in report["changes"] if ch["agentDeployment"] == f"{NS}/gha-dev" and ch["rollbacks"]]
        self.assertEqual(len(failed), 2, [(ch["digest"], ch["outcome"]) for ch in report["changes"]])
        self.assertTrue(all(ch["outcome"] == "Failed" for ch in failed), failed)
        self.assertIn("rolledBack", report["totals"])

    def test_5_hook_jobs_run_as_pods_and_their_exit_codes_decide(self):
        c = self.c
        passing = {"integrationTests": {"image": WORKLOAD, "args": ["exit", "0"], "activeDeadlineSeconds": 60},
                   "kbSync": {"image": WORKLOAD, "args": ["exit", "0"], "activeDeadlineSeconds": 60}}
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-hooks", "development", steps=passing))
        c.until("tests passed: Deployed", lambda: self.phase("gha-hooks")[0] == "Deployed", timeout=150)
        steps = self.phase("gha-hooks")[1]["status"]["steps"]
        self.assertEqual(sorted((s["name"], s["state"]) for s in steps),
                         [("integration-tests", "Succeeded"), ("kb-sync", "Succeeded")], steps)
        for step in steps:
            pods = self.c.json("-n", NS, "get", "pods", "-l", "job-name=" + step["job"])["items"]
            self.assertTrue(pods and all(p["status"]["phase"] == "Succeeded" for p in pods), f"{step['name']} ran as a pod")
        failing = {"integrationTests": {"image": WORKLOAD, "args": ["exit", "3"], "activeDeadlineSeconds": 60}}
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-hooks", "development", {"VERSION": "v2"}, steps=failing))
        c.until("tests failed", lambda: any(s["state"] == "Failed" for s in self.phase("gha-hooks")[1]["status"].get("steps", [])),
                timeout=240)
        c.show("a failing integration test")
        phase, ad = self.phase("gha-hooks")
        self.assertNotEqual(phase, "Deployed", ad["status"])

    def test_6_the_other_replica_leads_when_the_leader_goes_and_no_approval_is_lost(self):
        c = self.c
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-handover", "production", {"VERSION": "v1"}))
        c.until("PendingApproval", lambda: self.phase("gha-handover")[0] == "PendingApproval")
        apr = self.phase("gha-handover")[1]["status"]["approvalRequest"]
        lease = lambda: c.json("-n", "dvo-system", "get", "lease", "dvo-operator-leader")["spec"].get("holderIdentity")
        leader = lease()
        c.kubectl("admin", "-n", "dvo-system", "delete", "pod", leader, "--wait=false")
        gone = time.time()
        # The approval is given while the leader is going (the webhook of the other replica
        # and the Service stay up: the PDB and two replicas are what the chart is for).
        c.until("the approval accepted", lambda: c.kubectl("release-manager-1", "-n", NS, "annotate", "apr", apr,
                                                           "dvo.caat.io/approve=during the hand-over", check=False).returncode == 0,
                timeout=60)
        new = c.until("another leader", lambda: (lease() not in (None, leader)) and lease(), timeout=60)
        log(f"leader {leader} deleted; {new} leads after {time.time() - gone:.1f}s")
        c.until("Deployed after the hand-over", lambda: self.phase("gha-handover")[0] == "Deployed", timeout=120)
        c.until("two operator pods Ready again", lambda: len(self.ready_operators()) == 2, timeout=120)

    def test_7_helm_upgrade_to_a_new_image_rolls_nothing_out_again(self):
        c = self.c
        c.operator_image("localhost/dvo-operator:e2e-2")
        generations = lambda: {d["metadata"]["name"]: d["metadata"]["generation"]
                               for d in c.json("-n", NS, "get", "deployments")["items"]}
        for ad in c.json("-n", NS, "get", "adep")["items"]:
            c.until(f"{ad['metadata']['name']} settled", lambda: self.settled(ad["metadata"]["name"]), timeout=120)
        # A production change waits for approval across the upgrade.
        c.kubectl("developer", "apply", "-f", "-", stdin=agent("gha-upgrade", "production", {"VERSION": "v1"}))
        c.until("PendingApproval", lambda: self.settled("gha-upgrade") == "PendingApproval")
        before, started = generations(), len([e for e in self.audit() if e["event_type"] == "deployment_started"])
        # As the README says: CRDs first, then the chart.
        c.kubectl("admin", "apply", "--server-side", "-f", os.path.join(REPO, "charts/dvo-operator/crds/"))
        c.helm("upgrade", "dvo", os.path.join(REPO, "charts/dvo-operator"), "--namespace", "dvo-system", "--reuse-values",
               "--set", "image.tag=e2e-2", "--wait", "--timeout", "180s")
        pods = c.json("-n", "dvo-system", "get", "pods", "-l", "app.kubernetes.io/name=dvo-operator")["items"]
        upgraded = [p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")
                    and p["spec"]["containers"][0]["image"] == "localhost/dvo-operator:e2e-2"]
        self.assertEqual(len(upgraded), 2)
        holder = lambda: c.json("-n", "dvo-system", "get", "lease", "dvo-operator-leader")["spec"].get("holderIdentity")
        c.until("an upgraded pod leads", lambda: holder() in upgraded, timeout=60)
        # The new leader has resynced every AgentDeployment once it has decided them all again.
        time.sleep(10)  # the window in which a second rollout would show (not a synchronisation)
        self.assertEqual(generations(), before, "a Deployment was written again after the upgrade")
        self.assertEqual(len([e for e in self.audit() if e["event_type"] == "deployment_started"]), started)
        self.assertEqual(self.settled("gha-upgrade"), "PendingApproval")
        apr = self.phase("gha-upgrade")[1]["status"]["approvalRequest"]
        c.kubectl("release-manager-2", "-n", NS, "annotate", "apr", apr, "dvo.caat.io/approve=after the upgrade")
        c.until("approved after the upgrade: Deployed", lambda: self.settled("gha-upgrade") == "Deployed", timeout=120)
        verified = subprocess.run([BINARY, "audit", "verify"], capture_output=True, text=True,
                                  env=dict(os.environ, KUBECONFIG=os.path.join(c.dir, "kubeconfig")))
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)

    def test_8_eviction_respects_the_disruption_budget(self):
        c = self.c
        c.until("two operator pods Ready", lambda: len(self.ready_operators()) == 2, timeout=120)
        first, second = self.ready_operators()
        evict = lambda pod: c.kubectl("admin", "create", "--raw", f"/api/v1/namespaces/dvo-system/pods/{pod}/eviction",
                                      "-f", "-", check=False, stdin=json.dumps({
                                          "apiVersion": "policy/v1", "kind": "Eviction",
                                          "metadata": {"name": pod, "namespace": "dvo-system"}}))
        out = evict(first)
        self.assertEqual(out.returncode, 0, out.stderr)
        # The budget (minAvailable 1) now allows no other disruption until a replacement is Ready.
        out = evict(second)
        self.assertNotEqual(out.returncode, 0, "the second eviction went through")
        self.assertIn("disruption budget", out.stderr)
        c.until("two operator pods Ready again", lambda: len(self.ready_operators()) == 2, timeout=120)

    def test_9_uninstall_leaves_only_what_its_notes_say(self):
        c = self.c
        notes = c.helm("get", "notes", "dvo", "--namespace", "dvo-system")
        c.helm("uninstall", "dvo", "--namespace", "dvo-system", "--wait", "--timeout", "120s")
        c.until("the operator's pods gone", lambda: not c.json("-n", "dvo-system", "get", "pods")["items"], timeout=120)
        left = c.json("-n", "dvo-system", "get", "all,configmaps,secrets,serviceaccounts,roles,rolebindings,leases,networkpolicies,poddisruptionbudgets")["items"]
        left = sorted(f'{i["kind"]}/{i["metadata"]["name"]}' for i in left
                      if i["metadata"]["name"] not in ("kube-root-ca.crt", "default"))
        webhooks = [f'{k}/{i["metadata"]["name"]}' for k in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations")
                    for i in c.json("get", k)["items"] if "dvo" in i["metadata"]["name"]]
        log("left after helm uninstall:", left + webhooks)
        for thing in left + webhooks:
            name = thing.split("/", 1)[1]
            stem = name.rstrip("0123456789-")
            self.assertTrue(name in notes or stem in notes, f"{thing} is left, and the chart's notes do not say so")

    def ready_operators(self):
        return sorted(p["metadata"]["name"] for p in self.c.json("-n", "dvo-system", "get", "pods", "-l",
                      "app.kubernetes.io/name=dvo-operator")["items"]
                      if not p["metadata"].get("deletionTimestamp")
                      and any(x["type"] == "Ready" and x["status"] == "True" for x in p["status"].get("conditions", [])))

    def test_4_the_audit_log_tells_the_approval_story_and_verifies(self):
        entries = [e for e in self.audit() if e["resource"].startswith(f"{NS}/gha-prod")]
        kinds = [e["event_type"] for e in entries]
        for kind in ("approval_requested", "approval_granted", "deployment_started", "deployment_completed"):
            self.assertIn(kind, kinds)
        self.assertLess(kinds.index("approval_granted"), kinds.index("deployment_started"))
        self.assertTrue(any(e["user_id"] == "rosa-release" for e in entries), "the approver is named")
        verified = subprocess.run([BINARY, "audit", "verify"], capture_output=True, text=True,
                                  env=dict(os.environ, KUBECONFIG=os.path.join(self.c.dir, "kubeconfig")))
        self.assertEqual(verified.returncode, 0, verified.stdout + verified.stderr)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("e2e: a real node needs root")
    unittest.main(verbosity=2)
