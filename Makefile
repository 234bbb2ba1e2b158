# fnlet — developer entry points. The README's two commands are `make demo`
# and `make test`; everything else is a building block of those.
SHELL := /usr/bin/env bash
LOCALBIN ?= $(CURDIR)/bin
CONTROLLER_GEN_VERSION ?= v0.23.0
CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_GEN_VERSION)

.PHONY: all
all: build

##@ Development

.PHONY: fmt vet lint
fmt:
	gofmt -w $$(git ls-files '*.go')
vet:
	go vet ./...
lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

.PHONY: build
build:
	go build -o $(LOCALBIN)/manager ./cmd/manager
	go build -o $(LOCALBIN)/kubectl-fnlet ./cmd/kubectl-fnlet

##@ Dependencies and local daemons

.PHONY: deps containerd-up containerd-down images
deps:
	hack/install-deps.sh
	hack/build-containerd.sh
containerd-up: deps
	hack/containerd-up.sh
containerd-down:
	hack/containerd-down.sh
images: containerd-up
	hack/build-images.sh

##@ Tests

.PHONY: test unit test-runtime
# The README's test command: everything, against real daemons it starts itself.
test:
	hack/test.sh
# Every pure test: a test that needs a daemon (containerd, kube-apiserver,
# a cluster) skips under -short with the reason printed (-v shows it).
unit:
	go test -short ./...
test-runtime: images
	go test -count=1 ./internal/ctrd/...

##@ Benchmarks

.PHONY: bench-runtime
bench-runtime: images
	hack/bench-runtime.sh

##@ Generate

# CRD, RBAC and deepcopy code come from the markers in api/ and controllers/.
# Never edit config/crd/bases, config/rbac/role.yaml or zz_generated.*.go by
# hand: change the markers and run `make manifests generate`.

.PHONY: manifests generate verify-generated controller-gen
manifests: controller-gen ## Generate the CRD and the manager's ClusterRole from markers.
	$(CONTROLLER_GEN) rbac:roleName=fnlet-manager crd paths="./..." \
		output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

generate: controller-gen ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

verify-generated: manifests generate ## Fail if the committed generated files are stale.
	@if ! git diff --exit-code --stat -- config/crd config/rbac 'api/**/zz_generated.*.go'; then \
		echo >&2 "error: generated files are stale: run 'make manifests generate' and commit the result"; \
		exit 1; \
	fi
	@untracked=$$(git ls-files --others --exclude-standard -- config/crd/bases config/rbac 'api/**/zz_generated.*.go'); \
	if [ -n "$$untracked" ]; then \
		echo >&2 "error: generated files are not committed: $$untracked"; \
		echo >&2 "       run 'make manifests generate' and commit the result"; \
		exit 1; \
	fi

controller-gen: $(CONTROLLER_GEN) ## Install controller-gen (pinned) into ./bin.
$(CONTROLLER_GEN):
	@mkdir -p $(LOCALBIN)
	GOBIN=$(LOCALBIN) go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION)
	mv $(LOCALBIN)/controller-gen $(CONTROLLER_GEN)

##@ Demo

.PHONY: demo demo-down
demo: ## Local containerd + control plane + manager; apply the samples and print their results.
	hack/demo.sh
demo-down: ## Stop what `make demo` started.
	hack/demo.sh down

##@ E2E

.PHONY: e2e kind-e2e kind-node-image
e2e: ## Local single-node cluster, fnlet as a DaemonSet (kubectl apply -k), test/e2e through kubectl; FNLET_KEEP_CLUSTER=1 keeps it up.
	hack/e2e.sh
kind-e2e: ## The same test/e2e suite on a kind cluster: Docker (Debian's, started by hand if none runs), kind's default node image or KIND_NODE_IMAGE=local (built offline); stops what it started.
	hack/kind-e2e.sh
kind-node-image: ## Build kind's node image for our Kubernetes version offline, from the project's own builds (needs hack/docker-up.sh).
	hack/kind-node-image.sh

##@ Bench

.PHONY: bench
bench: ## fnlet vs ctrd vs raw containerd vs ctr (and a plain Pod if the cluster is up), one interleaved run; table + bench-results/*.json.
	hack/bench.sh

##@ Scale

.PHONY: scale
scale: ## Hollow-node scale harness: N hollow managers (1,10,100,500) on a real apiserver+etcd, old vs new claim protocol; prints the table (SCALE_* knobs in hack/scale.sh). Not in `make test`.
	hack/scale.sh

##@ Chaos

.PHONY: chaos
chaos: ## Fault injection (manager/containerd SIGKILLs, apiserver outage, 1000 calls for leaks, bad input) on a private containerd; prints the lost/duplicate/leak/wrong-status table.
	hack/chaos.sh
