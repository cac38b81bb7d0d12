# The test command is `make test`; it needs only Go, git and a C compiler
# (for -race): every other tool is pinned in go.mod and run with `go tool`.
GO ?= go

.PHONY: test vet lint generate check-generated bench build

test: vet lint check-generated
	$(GO) test -race -count=1 ./...

vet:
	@unformatted=$$(gofmt -l .); if [ -n "$$unformatted" ]; then echo "not gofmt-ed: $$unformatted" >&2; exit 1; fi
	$(GO) vet ./...

lint:
	$(GO) tool buf lint

generate:
	$(GO) tool buf generate

# Regenerates the code and fails if that changed any generated file, so the
# committed code always matches the protos (with a dirty tree too).
GENERATED = find proto -name '*.pb.go' | sort | xargs cat | sha256sum
check-generated:
	@before=$$($(GENERATED)); $(GO) tool buf generate; after=$$($(GENERATED)); \
	if [ "$$before" != "$$after" ]; then \
		git status --short -- proto; \
		echo "generated code was out of date: 'make generate' has now rewritten it; review and commit it" >&2; exit 1; \
	fi

# Go benchmarks (client TokenSource, the broker's cache hit, one durable
# audit commit, GetToken against the health check over mTLS in-process,
# proxied GETs against direct ones in-process), then GetToken against the
# health check from another process with ghz, over mTLS and with a caller
# key (bench/ghz.sh), and proxied GETs against direct ones with hey
# (bench/proxy.sh).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./client/ ./server/internal/tokens/ ./server/internal/store/ ./server/
	bash bench/ghz.sh
	bash bench/proxy.sh

build:
	$(GO) build -o bin/credbroker ./cmd/credbroker
