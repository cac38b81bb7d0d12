# The test command is `make test`; it needs only Go, git and a C compiler
# (for -race): every other tool is pinned in go.mod and run with `go tool`.
GO ?= go

.PHONY: test vet lint generate check-generated bench build

test: vet lint check-generated
	$(GO) test -race -count=1 ./...

vet:
	$(GO) vet ./...

lint:
	$(GO) tool buf lint

generate:
	$(GO) tool buf generate

# Regenerates the code and fails if that changed anything.
check-generated: generate
	@if [ -n "$$(git status --porcelain -- proto)" ]; then \
		git status --porcelain -- proto; git diff --stat -- proto; \
		echo "generated code is out of date: run 'make generate' and commit the result" >&2; exit 1; \
	fi

# Go benchmarks (client TokenSource and the broker's cache hit), then GetToken
# against the health check on one server with ghz (bench/ghz.sh).
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./client/ ./server/internal/tokens/
	bash bench/ghz.sh

build:
	$(GO) build -o bin/credbroker ./cmd/credbroker
