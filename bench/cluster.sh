#!/usr/bin/env bash
# A cluster against one broker, in the same run: GetToken (ghz) and
# proxied GETs (hey) on 3 replicas over a 3-member etcd cluster (the
# dev-etcd members, on this machine's disk), against the same loads on one
# broker on bbolt. The cluster's load is three load generators at once, one
# per replica, each with a third of the requests and of the callers. Every
# call is authenticated, granted, rate-limited and audited durably: on
# bbolt an fsync of the local file, on etcd a commit agreed by a quorum of
# members, each of which fsyncs.
#
# Besides throughput it prints the CPU each call cost every process (the
# brokers, the etcd members, the load generators), from /proc, and how many
# token requests each deployment sent upstream for its one account; beside
# them, the yardsticks of bench/gettoken.sh and bench/proxy.sh taken on the
# cluster: the replicas' health check, and a bare reverse-proxy hop
# (bench/barehop) to the same API. Then it links BENCH_ACCOUNTS (100,000)
# accounts through one replica (bench/scale) and restarts another: the time
# from its start to /readyz answering ready.
# Absolute numbers depend on the machine; everything here shares its CPUs.
# Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

concurrency=${BENCH_CONCURRENCY:-48}
concurrency=$((concurrency / 3 * 3)) # a third per replica
# hey sends a whole number of requests per caller.
requests=$((${BENCH_REQUESTS:-30000} / concurrency * concurrency))
base=${BENCH_PORT_BASE:-16000}
fake=127.0.0.1:$((base + 99))

source bench/lib.sh
go build -o "$work/ghz" github.com/bojand/ghz/cmd/ghz
go build -o "$work/hey" github.com/rakyll/hey
go build -o "$work/barehop" ./bench/barehop
go build -o "$work/scale" ./bench/scale

"$work/credbroker" fake-jumpcloud --listen "$fake" --any-client >"$work/fake.log" 2>&1 &
pids+=($!)
bare=127.0.0.1:$((base + 98))
"$work/barehop" --listen "$bare" --upstream "http://$fake" >"$work/barehop.log" 2>&1 &
pids+=($!)
declare -A pid_of
pid_of[barehop]=$!

# Ports: the bbolt broker at base+0..2; replica i at base+10*(i+1)+0..2
# (gRPC, proxy, ops); etcd member i at base+50+2i (clients) and +1 (peers).
common=(--rate-limit 1000000 --rate-burst 1000000 --log-level warn
	--jumpcloud-token-url-us "http://$fake/oauth2/token" --jumpcloud-api-url-us "http://$fake/api")

# serve NAME PORT ARGS...: starts a broker whose gRPC, proxy and ops
# listeners are PORT, PORT+1 and PORT+2.
serve() {
	local name=$1 port=$2
	shift 2
	"$work/credbroker" serve --listen "127.0.0.1:$port" --proxy-listen "127.0.0.1:$((port + 1))" \
		--ops-listen "127.0.0.1:$((port + 2))" --hub-listen off --data-dir "$work/$name" "${common[@]}" "$@" \
		>"$work/$name.out" 2>"$work/$name.log" &
	pids+=($!)
	pid_of[$name]=$!
	for _ in $(seq 3000); do
		curl -sf "http://127.0.0.1:$((port + 2))/readyz" >/dev/null && return
		sleep 0.01
	done
	echo "bench: $name did not start" >&2
	cat "$work/$name.log" >&2
	exit 1
}

serve bolt "$base"

cluster=""
endpoints=""
for i in 0 1 2; do
	cluster+="${cluster:+,}m$i=127.0.0.1:$((base + 51 + 2 * i))"
	endpoints+="${endpoints:+,}http://127.0.0.1:$((base + 50 + 2 * i))"
done
for i in 0 1 2; do
	"$work/credbroker" dev-etcd --name "m$i" --data-dir "$work/etcd-$i" --client "127.0.0.1:$((base + 50 + 2 * i))" \
		--peer "127.0.0.1:$((base + 51 + 2 * i))" --cluster "$cluster" >"$work/etcd-$i.log" 2>&1 &
	pids+=($!)
	pid_of[etcd-$i]=$!
done
for i in 0 1 2; do
	for _ in $(seq 300); do
		grep -q "serving clients" "$work/etcd-$i.log" && break
		sleep 0.1
	done
done
master_key=$(head -c 32 /dev/urandom | base64)
replica() { # I: starts replica I
	CREDBROKER_MASTER_KEY=$master_key serve "replica-$1" $((base + 10 * ($1 + 1))) --storage etcd --etcd-endpoints "$endpoints"
}
for i in 0 1 2; do replica "$i"; done

# setup NAME PORT: links the account "bench" on the broker at PORT with the
# admin key NAME printed, and makes a caller key granted it; prints the key.
setup() {
	local admin port=$2
	admin="authorization: Bearer $(grep -o 'cbk_[A-Za-z0-9_-]*' "$work/$1.out")"
	"$work/grpcurl" -plaintext -H "$admin" -d '{"account_id":"bench","jumpcloud_service_account":{"client_id":"demo-client","client_secret":"demo-secret","region":"REGION_US"}}' \
		"127.0.0.1:$port" credbroker.v1.AccountService/CreateAccount >/dev/null
	"$work/grpcurl" -plaintext -H "$admin" -d '{"key_id":"bench","caller_key":{"role":"ROLE_CALLER"}}' \
		"127.0.0.1:$port" credbroker.v1.CallerService/CreateCallerKey | grep -o 'cbk_[A-Za-z0-9_-]*'
	"$work/grpcurl" -plaintext -H "$admin" -d '{"name":"accounts/bench","principal":"callerKeys/bench"}' \
		"127.0.0.1:$port" credbroker.v1.AccountService/AddAccountGrant >/dev/null
}
bolt_key=$(setup bolt "$base")
cluster_key=$(setup replica-0 $((base + 10)))


# measure LABEL PIDS -- COMMAND...: runs COMMAND (a load that forks its
# generators in the background and waits for them) and prints its
# throughput and the CPU milliseconds per call of each group of PIDS
# ("name=pid pid ...").
measure() {
	local label=$1
	shift
	local groups=()
	while [ "$1" != -- ]; do
		groups+=("$1")
		shift
	done
	shift
	declare -A before
	for g in "${groups[@]}"; do
		for p in ${g#*=}; do before[$p]=$(cpu_us "$p"); done
	done
	local start end
	start=$(date +%s.%N)
	"$@"
	end=$(date +%s.%N)
	local line
	line=$(awk -v n="$requests" -v s="$start" -v e="$end" -v l="$label" 'BEGIN { printf "%-24s %8.0f calls/s", l, n / (e - s) }')
	for g in "${groups[@]}"; do
		local used=0
		for p in ${g#*=}; do used=$((used + $(cpu_us "$p") - before[$p])); done
		line+=$(awk -v u="$used" -v n="$requests" -v g="${g%%=*}" 'BEGIN { printf "  %s %.3f ms", g, u / 1000 / n }')
		awk -v u="$used" -v n="$requests" -v l="$label" -v g="${g%%=*}" 'BEGIN { printf "%s|%s|%.0f\n", l, g, u / n }' >>"$work/cpu"
	done
	echo "$line"
	echo "$label $(awk -v n="$requests" -v s="$start" -v e="$end" 'BEGIN { print n / (e - s) }')" >>"$work/rates"
}

# Load generators: ghz and hey, once against one broker, or three at once
# (a third each) against the three replicas; each fails the run on any
# answer but OK / 200.
ghz_call() { # METHOD DATA PORT KEY N C
	local out="$work/ghz-$3.json"
	"$work/ghz" --insecure --call "$1" -d "$2" \
		--metadata "{\"authorization\":\"Bearer $4\"}" --reflect-metadata "{\"authorization\":\"Bearer $4\"}" -n "$5" -c "$6" -O json "127.0.0.1:$3" >"$out"
	grep -q "\"OK\":$5[,}]" "$out" || { echo "bench: $1 on port $3 did not answer OK to all $5 calls" >&2; exit 1; }
}
ghz_at() { ghz_call credbroker.v1.TokenService/GetToken '{"name":"accounts/bench"}' "$@"; }
health_at() { ghz_call grpc.health.v1.Health/Check '{}' "$@"; }
bare_at() { # (PORT KEY) N C: the bare hop, with the stand-in's API key
	local out="$work/hey-bare.txt"
	"$work/hey" -n "$3" -c "$4" -H "x-api-key: demo-api-key" "http://$bare/api/v2/systems" >"$out"
	grep -q "\[200\]	$3 responses" "$out" || { echo "bench: the bare hop did not answer 200 to all $3 calls" >&2; cat "$out" >&2; exit 1; }
}
hey_at() { # PORT KEY N C
	local out="$work/hey-$1.txt"
	"$work/hey" -n "$3" -c "$4" -H "Proxy-Authorization: Bearer $2" "http://127.0.0.1:$(($1 + 1))/v1/accounts/bench/proxy/v2/systems" >"$out"
	grep -q "\[200\]	$3 responses" "$out" || { echo "bench: the proxy on port $(($1 + 1)) did not answer 200 to all $3 calls" >&2; cat "$out" >&2; exit 1; }
}
one() { "$1" "$base" "$bolt_key" "$requests" "$concurrency"; }
three() {
	local gens=()
	for i in 0 1 2; do
		"$1" $((base + 10 * (i + 1))) "$cluster_key" $((requests / 3)) $((concurrency / 3)) &
		gens+=($!)
	done
	for g in "${gens[@]}"; do wait "$g"; done
}
# generators are children of this shell: their CPU is counted through
# the shell's own children times, so measure them as a group by the shell.
replicas="replicas=${pid_of[replica-0]} ${pid_of[replica-1]} ${pid_of[replica-2]}"
members="etcd=${pid_of[etcd-0]} ${pid_of[etcd-1]} ${pid_of[etcd-2]}"

echo "== warming up"
one ghz_at >/dev/null
three ghz_at >/dev/null
echo "== $requests calls each, $concurrency callers in all; CPU per call of each process group"
for round in 1 2; do
	measure "GetToken, bbolt" "broker=${pid_of[bolt]}" -- one ghz_at
	measure "health check, 3 on etcd" "$replicas" -- three health_at
	measure "GetToken, 3 on etcd" "$replicas" "$members" -- three ghz_at
	measure "proxied GET, bbolt" "broker=${pid_of[bolt]}" -- one hey_at
	measure "bare hop" "bare=${pid_of[barehop]}" -- one bare_at
	measure "proxied GET, 3 on etcd" "$replicas" "$members" -- three hey_at
done
awk '/^(GetToken|proxied)/ { rate[$0 ~ /bbolt/ ? "bolt " $1 : "etcd " $1] += $NF } END {
	printf "GetToken: 3 replicas on etcd / 1 on bbolt: %.2f\n", rate["etcd GetToken,"] / rate["bolt GetToken,"]
	printf "proxied GET: 3 replicas on etcd / 1 on bbolt: %.2f\n", rate["etcd proxied"] / rate["bolt proxied"]
}' "$work/rates"

# upstream REQUESTS of a deployment, from the brokers' /metrics.
upstream() {
	local n=0 port
	for port in "$@"; do
		n=$((n + $(curl -s "http://127.0.0.1:$((port + 2))/metrics" | awk '/^credbroker_upstream_request_duration_seconds_count/ { s += $2 } END { print s + 0 }')))
	done
	echo "$n"
}
echo "token requests sent upstream for the account: bbolt $(upstream "$base"), 3 replicas on etcd $(upstream $((base + 10)) $((base + 20)) $((base + 30))) (linking fetches the first)"

# 100,000 accounts across the cluster, linked through replica-0; then
# replica-2 restarts and loads them from etcd.
accounts=${BENCH_ACCOUNTS:-100000}
echo "== linking $accounts accounts through replica-0..."
read -r _ _ link_rate < <("$work/scale" -addr "127.0.0.1:$((base + 10))" -admin-key "$(grep -o 'cbk_[A-Za-z0-9_-]*' "$work/replica-0.out")" -from 1 -link "$accounts")
kill -TERM "${pid_of[replica-2]}"
wait "${pid_of[replica-2]}" 2>/dev/null || true
start=$(date +%s.%N)
replica 2
ready_s=$(seconds_since "$start")
replica_mb=$(rss_mb "${pid_of[replica-2]}")
echo "linked at $link_rate accounts/s; replica-2 ready ${ready_s}s after its start, holding $replica_mb MB"

# The last round's CPU per call, as figures.
cpu_of() { awk -F'|' -v l="$1" -v g="$2" '$1 == l && $2 == g { v = $3 } END { print v }' "$work/cpu"; }
token_cpu=$(cpu_of "GetToken, 3 on etcd" replicas)
health_cpu=$(cpu_of "health check, 3 on etcd" replicas)
proxy_cpu=$(cpu_of "proxied GET, 3 on etcd" replicas)
bare_cpu=$(cpu_of "bare hop" bare)
echo
figure cluster_gettoken_cpu "GetToken CPU per call on a replica (3 on etcd) / its health check's" "$(ratio "$token_cpu" "$health_cpu")x ($token_cpu / $health_cpu µs; bbolt $(cpu_of "GetToken, bbolt" broker) µs)" "<= 1.30x" "$(meets "$(ratio "$token_cpu" "$health_cpu")" "<=" 1.30) (etcd: $(cpu_of "GetToken, 3 on etcd" etcd) µs)"
figure cluster_proxy_cpu "Proxied GET CPU per call on a replica (3 on etcd) / bare hop's" "$(ratio "$proxy_cpu" "$bare_cpu")x ($proxy_cpu / $bare_cpu µs; bbolt $(cpu_of "proxied GET, bbolt" broker) µs)" "<= 1.15x" "$(meets "$(ratio "$proxy_cpu" "$bare_cpu")" "<=" 1.15) (etcd: $(cpu_of "proxied GET, 3 on etcd" etcd) µs)"
figure cluster_restart "Replica restart to ready, $accounts accounts on 3 replicas" "$ready_s s ($replica_mb MB)" "< 5 s" "$(meets "$ready_s" "<=" 4.99)"
