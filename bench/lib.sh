# Shared by the bench scripts: a work directory (on disk, not tmpfs, so
# audit fsyncs cost what they cost in production) holding the built
# binaries, and a cleanup that stops every process started into $pids.
work=$(mktemp -d "${BENCH_DIR:-$PWD}/.bench-XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/credbroker" ./cmd/credbroker
go build -o "$work/grpcurl" github.com/fullstorydev/grpcurl/cmd/grpcurl
