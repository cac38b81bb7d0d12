# The test command is `make test`. Go, git and a C compiler (for -race) must
# be there; every Go tool is pinned in go.mod and run with `go tool`, and
# `make deps` installs the rest from Debian's packages and npm. Without
# them (no root, no apt-get), `go test ./...` runs the Go tests alone,
# skipping the parts that need them and saying which.
GO ?= go

.PHONY: test deps vet lint generate check-generated bench build image hub-screenshots

test: deps vet lint check-generated
	CREDBROKER_REQUIRE_ALL=1 $(GO) test -race -count=1 ./...

# Debian's packages the tests need, each as package:command-it-installs.
# The Python client: protoc and grpc_python_plugin (to generate it),
# python3-grpcio and python3-protobuf (to run it, checked apart); the
# TypeScript one: Node.js and the npm packages locked in
# client/typescript/package-lock.json; the Hub's browser tests: chromium;
# the image: CA certificates to put in it, podman and runc to run it; the
# systemd unit: systemd-analyze.
DEBIAN_NEEDS = protobuf-compiler:protoc protobuf-compiler-grpc:grpc_python_plugin nodejs:node npm:npm chromium:chromium \
	podman:podman runc:runc systemd:systemd-analyze
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)
deps:
	@need=; for p in $(DEBIAN_NEEDS); do command -v $${p#*:} >/dev/null || need="$$need $${p%%:*}"; done; \
	/usr/bin/python3 -c 'import grpc, google.protobuf' 2>/dev/null || need="$$need python3-grpcio python3-protobuf"; \
	[ -f /etc/ssl/certs/ca-certificates.crt ] || need="$$need ca-certificates"; \
	if [ -n "$$need" ]; then \
		if ! command -v apt-get >/dev/null || { [ -n "$(SUDO)" ] && ! sudo -n true 2>/dev/null; }; then \
			echo "make deps: missing Debian packages:$$need" >&2; \
			echo "Install them (apt-get install$$need) and run make test again, or run the Go tests alone with 'go test ./...'," >&2; \
			echo "which skips the parts that need them and says which." >&2; exit 1; \
		fi; \
		$(SUDO) apt-get update && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends $$need; \
	fi
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
# proxied GETs against direct ones in-process), then the figures the
# README's performance table shows, each beside its target: GetToken
# against the health check (bench/gettoken.sh), the egress proxy against a
# bare reverse-proxy hop (bench/proxy.sh), 3 replicas on a 3-member etcd
# cluster against one broker on bbolt (bench/cluster.sh), and one broker
# with 100,000 accounts (bench/scale.sh). They are
# written to bench/results.tsv, with the machine they were measured on,
# and the README's table is written from that file (bench/table).
BENCH_RESULTS := $(CURDIR)/bench/results.tsv
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./client/ ./server/internal/tokens/ ./server/internal/store/ ./server/
	printf '# machine\t%s, %s cores, %s\n' "$$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')" "$$(nproc)" "$$($(GO) env GOVERSION)" >$(BENCH_RESULTS).new
	BENCH_RESULTS=$(BENCH_RESULTS).new bash bench/gettoken.sh
	BENCH_RESULTS=$(BENCH_RESULTS).new bash bench/proxy.sh
	BENCH_RESULTS=$(BENCH_RESULTS).new bash bench/cluster.sh
	BENCH_RESULTS=$(BENCH_RESULTS).new bash bench/scale.sh
	mv $(BENCH_RESULTS).new $(BENCH_RESULTS)
	$(GO) run ./bench/table

# A static binary stamped with its version (the git tag, vX.Y.Z, or
# "dev"), commit and build date; `credbroker version` prints them.
VERSION ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null)
COMMIT ?= $(shell git describe --always --dirty --abbrev=40 --match 'no-tags-wanted' 2>/dev/null || echo unknown)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS = -s -w $(foreach v,version=$(VERSION) commit=$(COMMIT) date=$(BUILD_DATE),-X github.com/credbroker/credbroker/internal/version.$(v))
BIN ?= bin
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/credbroker ./cmd/credbroker

# The OCI image, from scratch, as an archive for `podman load` or `docker
# load` (deploy/image says what is in it).
image: build
	$(GO) run ./deploy/image --binary $(BIN)/credbroker --out $(BIN)/credbroker-image.tar --arch $$($(GO) env GOARCH) \
		--version '$(VERSION)' --revision '$(COMMIT)' --created '$(BUILD_DATE)'

# Takes the README's screenshots of the Hub again, from its browser test.
hub-screenshots: deps
	CREDBROKER_HUB_SCREENSHOTS=$(CURDIR)/server/internal/hub/screenshots CREDBROKER_REQUIRE_ALL=1 $(GO) test -count=1 -run '^TestHubInABrowser$$' ./server/
