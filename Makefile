# berth: build, test and try the GitLab Runner custom executor.
GO      ?= go
BIN     ?= bin/berth
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test unit cover lint rig demo bench clean

# berth, and beside it the helpers that only compose and Kubernetes deploys
# run: they link docker compose and client-go (minutes to build the first
# time, tens of milliseconds to start).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/berth
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(dir $(BIN))berth-compose ./cmd/berth-compose
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(dir $(BIN))berth-kube ./cmd/berth-kube

# Starts the rig (engine, registry, images, runner) and runs every test.
test:
	.ci/test.sh

# Unit tests only: no engine, no runner.
unit:
	$(GO) test -short ./...

# Unit coverage of the deploy packages; fails below 60% (docs/drivers.md).
cover:
	.ci/cover.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@# the message table is generated: fail early, not after the e2e tests
	$(GO) test ./cmd/berth -short -count=1 -run TestTroubleshootingListsEveryMessage

rig:
	.ci/rig.sh up

# Runs the example app's jobs through the real runner with berth.
demo: build
	DEMO_KUBE=$(DEMO_KUBE) examples/demo.sh

# Side-by-side benchmarks against the bash driver; writes docs/BENCHMARKS.md.
bench: build
	bench/run.sh

clean:
	rm -rf bin
