# dvo-operator. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test e2e build image controlplane cluster run demo crds bench scale fuzz fmt clippy unit integration clean

## Everything CI checks: format, lints, unit and CLI tests, integration tests against a real
## control plane (built on first use, cached in tests/controlplane/bin), then the end-to-end
## suite on a real node.
test: controlplane
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked
	$(MAKE) e2e

## The end-to-end suite on a real node (root; Debian's containerd, runc, containernetworking-plugins,
## iptables and conntrack): the chart's own pods from the image of the built binary, real workloads.
e2e: controlplane
	tests/controlplane/build.sh --node
	tests/controlplane/cluster.sh node-cleanup
	$(CARGO) build --locked --bin dvo
	tests/e2e/run.py

build:
	$(CARGO) build --locked

## The operator's OCI image (no base image, registry or container engine): target/oci/dvo-operator.tar,
## for `ctr -n k8s.io images import`; the same binary gives the same digest.
IMAGE ?= localhost/dvo-operator:$(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image:
	$(CARGO) build --release --locked --bin dvo
	scripts/image.py --binary target/release/dvo --out target/oci/dvo-operator.tar --name $(IMAGE)

## Build kube-apiserver, kube-controller-manager, kubectl and etcd (only when missing or changed).
controlplane:
	tests/controlplane/build.sh

## Start a control plane for a person; prints the KUBECONFIG export line. Ctrl-C stops it.
cluster:
	tests/controlplane/cluster.sh up

## Run the operator and its webhook locally (starts the local control plane when no cluster is
## reachable), with the CRDs, the chart's RBAC and the examples. Ctrl-C stops everything.
run:
	scripts/local.sh run

## The production approval story, step by step, on a fresh local control plane.
demo:
	scripts/local.sh demo

## Regenerate crds/ (and the chart's copy) from the Rust types (a test fails when stale).
crds:
	$(CARGO) run --quiet -- crds > crds/dvo-crds.yaml
	cp crds/dvo-crds.yaml charts/dvo-operator/crds/dvo-crds.yaml

## Benchmarks: decide(), the audit chain, and audit appends to a real API server (started here).
bench: controlplane
	$(CARGO) bench --bench decide
	$(CARGO) bench --bench audit
	$(CARGO) bench --bench audit_store

## The operator at scale on a real API server (not part of `make test`; about 10 minutes):
## SCALE_AGENTS AgentDeployments x SCALE_POLICIES policies, each figure next to its goal.
SCALE_AGENTS ?= 10000
SCALE_POLICIES ?= 100
scale: controlplane
	SCALE_AGENTS=$(SCALE_AGENTS) SCALE_POLICIES=$(SCALE_POLICIES) scripts/scale.py

## Coverage-guided fuzzing of every parser of untrusted data (not part of `make test`; needs the
## nightly toolchain and `cargo install cargo-fuzz`): FUZZ_SECONDS per target. New inputs go to
## target/fuzz-corpus; crashes to fuzz/artifacts (fix, then keep them in fuzz/regressions, which
## `make test` replays).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := admission_review policy stamps jwt audit role_mapping
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p target/fuzz-corpus/$$t && \
	  cargo +nightly fuzz run --fuzz-dir fuzz $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib --test cli

integration: controlplane
	$(CARGO) test --test integration

clean:
	$(CARGO) clean
	rm -rf tests/controlplane/bin
