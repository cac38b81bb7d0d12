# Shared by the bench scripts: a work directory (on disk, not tmpfs, so
# audit fsyncs cost what they cost in production) holding the built
# binaries, a cleanup that stops every process started into $pids, the
# CPU a process has used, and the figures each script measures.
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

# cpu_us PID...: the CPU time (user and system) the processes have used, in µs.
ticks=$(getconf CLK_TCK)
cpu_us() {
	local total=0 p
	for p in "$@"; do
		total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
	done
	echo $((total * 1000000 / ticks))
}

# children_cpu VAR: sets VAR to the CPU time (user and system) the shell's
# finished children have used, in µs (for a client run in the foreground).
# Not through $(...) or a pipe: a subshell has no children of its own.
children_cpu() {
	times >"$work/times"
	read -r _ _ "$1" < <(awk 'NR == 2 { split($1 "m" $2, t, "[ms]"); printf "x x %.0f\n", (t[1] * 60 + t[2] + t[4] * 60 + t[5]) * 1e6 }' "$work/times")
}

# rss_mb PID [FIELD]: a process's resident memory in MB (VmRSS, or FIELD
# of /proc/PID/status: RssFile is the part mapped from files, such as the
# database's pages in the page cache).
rss_mb() { awk -v f="${2:-VmRSS}:" '$1 == f { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

# seconds_since START: the seconds from START (date +%s.%N) to now, to 0.01.
seconds_since() { awk -v s="$1" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }'; }

# figure ID DESCRIPTION VALUE TARGET MET: prints a measured figure beside its
# target and, if BENCH_RESULTS names a file, adds it there as a line of
# tab-separated fields (bench/table turns the file into the README's table).
figure() {
	printf '%-58s %14s   target %-16s %s\n' "$2" "$3" "$4" "$5"
	if [ -n "${BENCH_RESULTS:-}" ]; then
		printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$BENCH_RESULTS"
	fi
}

# meets VALUE OP LIMIT: "met" or "NOT met" (OP is <= or >=).
meets() {
	awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { ok = (op == "<=") ? v <= l : v >= l; print ok ? "met" : "NOT met" }'
}

# ratio A B: A / B, to two decimals.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# median X...: the median of numbers.
median() {
	printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# bootstrap_key: the first admin key of the broker started with its output
# in $work/broker.out and its log in $work/broker.log, once it prints it.
bootstrap_key() {
	for _ in $(seq 50); do
		grep -q 'cbk_' "$work/broker.out" 2>/dev/null && break
		sleep 0.2
	done
	if ! grep -q 'cbk_' "$work/broker.out"; then
		echo "bench: the broker did not start" >&2
		cat "$work/broker.log" >&2
		exit 1
	fi
	grep -o 'cbk_[A-Za-z0-9_-]*' "$work/broker.out"
}
