#!/usr/bin/env bash
# Egress-proxy GET throughput against the same GETs sent to the upstream
# directly, in the same run, with hey. The upstream is the JumpCloud
# stand-in's API; the proxied calls carry a caller key, pass the grant check
# and the rate limiter, get the account's API key injected, and are written
# to the durable audit trail. Both loads use keep-alive connections on
# loopback, plaintext, so the ratio is the price of the proxy itself.
#
# Two upstreams: one that answers at once, where the load generator, the
# broker and the upstream compete for the same CPUs and the ratio is the
# proxy's CPU cost against a do-nothing server; and one that takes
# BENCH_API_DELAY (default 20ms) per answer, as a real API does (JumpCloud's
# is further away than that), where the ratio is what callers notice.
# Absolute numbers depend on the machine. Everything stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-60000}
slow_requests=${BENCH_SLOW_REQUESTS:-10000} # at about 2,000 a second
concurrencies=${BENCH_CONCURRENCY:-50}
rounds=${BENCH_ROUNDS:-3}
broker=127.0.0.1:${BENCH_BROKER_PORT:-15061}
proxy=127.0.0.1:${BENCH_PROXY_PORT:-15062}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18095}
slow=127.0.0.1:${BENCH_SLOW_FAKE_PORT:-18096}
delay=${BENCH_API_DELAY:-20ms}

source bench/lib.sh
go build -o "$work/hey" github.com/rakyll/hey

"$work/credbroker" fake-jumpcloud --listen "$fake" --api-key bench-api-key >"$work/fake.log" 2>&1 &
pids+=($!)
"$work/credbroker" fake-jumpcloud --listen "$slow" --api-key bench-api-key --api-delay "$delay" >"$work/slow.log" 2>&1 &
pids+=($!)
# The US region's API answers at once, the EU region's after $delay.
"$work/credbroker" serve --listen "$broker" --ops-listen off --hub-listen off --proxy-listen "$proxy" --data-dir "$work/data" \
	--rate-limit 1000000 --rate-burst 1000000 \
	--jumpcloud-api-url-us "http://$fake/api" --jumpcloud-api-url-eu "http://$slow/api" \
	--log-level warn >"$work/broker.out" 2>"$work/broker.log" &
pids+=($!)

for _ in $(seq 50); do
	grep -q 'cbk_' "$work/broker.out" 2>/dev/null && break
	sleep 0.2
done
admin="authorization: Bearer $(grep -o 'cbk_[A-Za-z0-9_-]*' "$work/broker.out")"
key=$("$work/grpcurl" -plaintext -H "$admin" -d '{"key_id":"bench","caller_key":{"role":"ROLE_CALLER"}}' \
	"$broker" credbroker.v1.CallerService/CreateCallerKey | grep -o 'cbk_[A-Za-z0-9_-]*')
for account in instant:REGION_US api-like:REGION_EU; do
	"$work/grpcurl" -plaintext -H "$admin" -d "{\"account_id\":\"${account%%:*}\",\"jumpcloud_api_key\":{\"api_key\":\"bench-api-key\",\"region\":\"${account##*:}\"}}" \
		"$broker" credbroker.v1.AccountService/CreateAccount >/dev/null
	"$work/grpcurl" -plaintext -H "$admin" -d "{\"name\":\"accounts/${account%%:*}\",\"principal\":\"callerKeys/bench\"}" \
		"$broker" credbroker.v1.AccountService/AddAccountGrant >/dev/null
done

# run URL HEADER: prints "rps p50_ms p99_ms", failing on any answer but 200.
run() {
	local out="$work/out.txt"
	"$work/hey" -n "$requests" -c "$concurrency" -H "$2" "$1" >"$out"
	local ok
	ok=$(awk '/^ *\[200\][[:space:]]+[0-9]+ responses/ { print $2 }' "$out") # the status line, not a histogram bucket of 200
	if [ "${ok:-0}" != "$requests" ]; then
		echo "bench: $1 answered 200 to ${ok:-0} of $requests calls" >&2
		cat "$out" >&2
		exit 1
	fi
	awk '/Requests\/sec:/ { rps = $2 } /50%% in/ { p50 = $3 } /99%% in/ { p99 = $3 }
		END { printf "%.0f %.3f %.3f\n", rps, p50 * 1000, p99 * 1000 }' "$out"
}

# compare NAME UPSTREAM ACCOUNT REQUESTS: rounds of direct and proxied loads.
compare() {
	local requests=$4
	local direct="http://$2/api/v2/systems?limit=10"
	local proxied="http://$proxy/v1/accounts/$3/proxy/v2/systems?limit=10"
	run "$direct" "x-api-key: bench-api-key" >/dev/null # warm up both paths
	run "$proxied" "Proxy-Authorization: Bearer $key" >/dev/null
	printf '\n%s, %d concurrent callers, %d requests per round:\n' "$1" "$concurrency" "$requests"
	printf '%-6s %14s %14s %7s %20s\n' round direct_rps proxied_rps ratio "p50 direct/proxied"
	local sum=0 round d_rps d_p50 p_rps p_p50 ratio
	for round in $(seq "$rounds"); do
		read -r d_rps d_p50 _ < <(run "$direct" "x-api-key: bench-api-key")
		read -r p_rps p_p50 _ < <(run "$proxied" "Proxy-Authorization: Bearer $key")
		ratio=$(awk -v p="$p_rps" -v d="$d_rps" 'BEGIN { printf "%.3f", p / d }')
		sum=$(awk -v s="$sum" -v r="$ratio" 'BEGIN { print s + r }')
		printf '%-6s %14s %14s %7s %9s/%s ms\n' "$round" "$d_rps" "$p_rps" "$ratio" "$d_p50" "$p_p50"
	done
	awk -v s="$sum" -v n="$rounds" 'BEGIN { printf "mean ratio proxied/direct: %.3f (target >= 0.70)\n", s / n }'
}

echo "GET through the egress proxy vs. straight to the upstream"
for concurrency in $concurrencies; do
	compare "upstream answering at once" "$fake" instant "$requests"
	compare "upstream answering after $delay" "$slow" api-like "$slow_requests"
done
