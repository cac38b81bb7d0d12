# The test command is `make test`. Go, git and a C compiler (for -race) must
# be there; every Go tool is pinned in go.mod and run with `go tool`, and
# `make deps` installs what the Python and TypeScript clients need.
GO ?= go

.PHONY: test deps vet lint generate check-generated bench build hub-screenshots

test: deps vet lint check-generated
	CREDBROKER_REQUIRE_CLIENTS=1 $(GO) test -race -count=1 ./...

# The Python client needs Debian's protoc, grpc_python_plugin (to generate
# it) and python3-grpcio/python3-protobuf (to run it); the TypeScript one,
# Node.js and the npm packages locked in client/typescript/package-lock.json.
# The Hub's browser tests drive Debian's chromium.
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES = protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf
deps:
	@if ! command -v protoc >/dev/null || ! command -v grpc_python_plugin >/dev/null || \
		! /usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null; then \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi
	@command -v npm >/dev/null || { $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends nodejs npm; }
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; }
	cd client/typescript && npm ci --no-audit --no-fund --loglevel=error

# gofmt, go vet, then staticcheck (pinned in go.mod) with its default
# checks over every package, the generated code under proto/ included: it
# has no findings, so nothing is excluded.
vet:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "not gofmt-ed: $$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

lint:
	$(GO) tool buf lint

generate:
	$(GO) tool buf generate
	$(GO) tool buf generate --template client/python/buf.gen.yaml
	$(GO) tool buf generate --template client/typescript/buf.gen.yaml

# Regenerates the code and fails if that changed any generated file, so the
# committed code always matches the protos (with a dirty tree too).
GENERATED = find proto client/python/credbroker client/typescript/src/gen -type f | sort | xargs cat | sha256sum
check-generated:
	@before=$$($(GENERATED)); $(MAKE) -s generate; after=$$($(GENERATED)); \
	if [ "$$before" != "$$after" ]; then \
		git status --short -- proto client; \
		echo "generated code was out of date: 'make generate' has now rewritten it; review and commit it" >&2; exit 1; \
	fi

# Go benchmarks (client TokenSource, the broker's cache hit, one durable
# audit commit, GetToken against the health check over mTLS in-process,
# proxied GETs against direct ones in-process), then GetToken against the
# health check from another process with ghz, over mTLS and with a caller
# key (bench/ghz.sh), and proxied GETs against direct ones with hey
# (bench/proxy.sh), and 3 replicas on a 3-member etcd cluster against one
# broker on bbolt (bench/cluster.sh).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./client/ ./server/internal/tokens/ ./server/internal/store/ ./server/
	bash bench/ghz.sh
	bash bench/proxy.sh
	bash bench/cluster.sh

# A static binary stamped with its version (the git tag, vX.Y.Z, or
# "dev"), commit and build date; `credbroker version` prints them.
VERSION ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null)
COMMIT ?= $(shell git describe --always --dirty --abbrev=40 --match 'no-tags-wanted' 2>/dev/null || echo unknown)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS = -s -w $(foreach v,version=$(VERSION) commit=$(COMMIT) date=$(BUILD_DATE),-X github.com/credbroker/credbroker/internal/version.$(v))
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/credbroker ./cmd/credbroker

# Takes the README's screenshots of the Hub again, from its browser test.
hub-screenshots: deps
	CREDBROKER_HUB_SCREENSHOTS=$(CURDIR)/server/internal/hub/screenshots CREDBROKER_REQUIRE_CLIENTS=1 $(GO) test -count=1 -run '^TestHubInABrowser$$' ./server/
