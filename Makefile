# halo — developer targets. `make help` lists them.
#
# Tools are installed with `go install` at pinned versions into ./.bin, which
# every target puts first on PATH; nothing needs to be installed by hand.

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GRPCURL_VERSION            := v1.9.4
GOLANGCI_LINT_VERSION      := v2.15.0
GOVULNCHECK_VERSION        := v1.10.0
# The Go vulnerability database, as a module snapshot: no host but the
# module proxy is needed. `make vuln` indexes its OSV files and checks
# the module against them offline.
VULNDB_VERSION             := v0.0.0-20261105234957-e22db6528018

BIN := $(CURDIR)/.bin
export PATH := $(BIN):$(PATH)
export GOBIN := $(BIN)
# go.mod's toolchain line names the Go release with the standard library's
# security fixes; auto fetches it (from the module proxy) where the local Go
# is older.
export GOTOOLCHAIN := auto

# How long each fuzz target runs in `make fuzz`.
FUZZTIME ?= 20s
# Which Go benchmarks `make bench` runs.
BENCH ?= .

STAMPS := $(BIN)/.buf-$(BUF_VERSION) $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) \
          $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) $(BIN)/.grpcurl-$(GRPCURL_VERSION) \
          $(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION) $(BIN)/.govulncheck-$(GOVULNCHECK_VERSION) \
          $(BIN)/.indexdb-$(VULNDB_VERSION)

.PHONY: help tools run test gen check-gen lint tidy-check vuln fuzz bench smoke clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

tools: $(STAMPS) ## install buf, protoc-gen-go(-grpc), grpcurl, golangci-lint and govulncheck (pinned) into .bin

$(BIN)/.buf-$(BUF_VERSION):
	go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
	@touch $@
$(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION):
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@touch $@
$(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION):
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@touch $@
$(BIN)/.grpcurl-$(GRPCURL_VERSION):
	go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
	@touch $@
$(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION):
	go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@touch $@
$(BIN)/.govulncheck-$(GOVULNCHECK_VERSION):
	go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	@touch $@
$(BIN)/.indexdb-$(VULNDB_VERSION):
	go install golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION)
	rm -rf $(BIN)/vulndb
	indexdb -vulns "$$(go mod download -json golang.org/x/vulndb@$(VULNDB_VERSION) | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$$/\1/p')/data/osv" -out $(BIN)/vulndb
	@touch $@

run: ## run halo-server as in the quick start (embedded etcd in ./halo-data, gRPC on 127.0.0.1:18000)
	go run ./server/cmd/halo-server

test: $(BIN)/.grpcurl-$(GRPCURL_VERSION) ## run every test with the race detector (the README's test command)
	go test -race -count=1 ./...

gen: $(BIN)/.buf-$(BUF_VERSION) $(BIN)/.protoc-gen-go-$(PROTOC_GEN_GO_VERSION) $(BIN)/.protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION) ## regenerate gen/ from proto/
	buf generate

check-gen: gen ## fail if gen/ is not what the protos generate
	@git diff --exit-code -- gen/ || { echo "gen/ is stale: run 'make gen' and commit it"; exit 1; }
	@test -z "$$(git status --porcelain -- gen/)" || { git status --porcelain -- gen/; echo "gen/ has files git does not know: run 'make gen' and commit it"; exit 1; }

lint: $(BIN)/.buf-$(BUF_VERSION) $(BIN)/.golangci-lint-$(GOLANGCI_LINT_VERSION) ## gofmt, go vet, golangci-lint, buf lint, buf breaking against main
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^gen/')); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	go vet ./...
	golangci-lint run ./...
	buf lint
	@if git rev-parse --verify -q main >/dev/null; then \
		echo "buf breaking --against .git#branch=main"; buf breaking --against '.git#branch=main'; \
	else echo "buf breaking: no main branch here, skipped"; fi

tidy-check: ## fail if go mod tidy would change go.mod or go.sum
	go mod tidy
	@git diff --exit-code -- go.mod go.sum || { echo "go.mod/go.sum are not tidy: run 'go mod tidy' and commit them"; exit 1; }

vuln: $(BIN)/.govulncheck-$(GOVULNCHECK_VERSION) $(BIN)/.indexdb-$(VULNDB_VERSION) ## govulncheck the module against the pinned vulnerability database (offline)
	govulncheck -db file://$(BIN)/vulndb ./...

FUZZ_PKGS := ./server/topology/ ./server/ads/ ./agent/config/ ./agent/xdsclient/ ./internal/identity/

fuzz: ## run each validator fuzz target for FUZZTIME (default 20s)
	@for p in $(FUZZ_PKGS); do \
		for f in $$(go test -list '^Fuzz' $$p | grep '^Fuzz'); do \
			echo "fuzz $$p $$f ($(FUZZTIME))"; \
			go test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
		done; \
	done

bench: ## run the Go benchmarks and the scenario benchmarks under bench/
	go test -run '^$$' -bench '$(BENCH)' -benchmem ./...
	go run ./bench/propagation -n 100,1000,10000 -writes 5
	go run ./bench/topology -nodes 10000
	go run ./bench/dataplane
	go run ./bench/failover

smoke: $(BIN)/.grpcurl-$(GRPCURL_VERSION) ## run the README quick start and production mode for real (grpcurl, the agent)
	./.ci/smoke
	./.ci/smoke-production

clean: ## remove installed tools and the quick starts' data
	rm -rf $(BIN) halo-data halo-agent-cache
