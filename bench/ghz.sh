#!/usr/bin/env bash
# GetToken cache-hit throughput against grpc.health.v1.Health/Check on the
# same broker in the same run, with ghz at 50 concurrent callers. The ratio
# is the figure that matters; absolute numbers depend on the machine.
# Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-60000}
concurrency=${BENCH_CONCURRENCY:-50}
rounds=${BENCH_ROUNDS:-3}
broker=127.0.0.1:${BENCH_BROKER_PORT:-15051}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18085}

work=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/credbroker" ./cmd/credbroker
go build -o "$work/ghz" github.com/bojand/ghz/cmd/ghz
go build -o "$work/grpcurl" github.com/fullstorydev/grpcurl/cmd/grpcurl

"$work/credbroker" fake-jumpcloud --listen "$fake" >"$work/fake.log" 2>&1 &
pids+=($!)
"$work/credbroker" serve --listen "$broker" --data-dir "$work/data" \
	--jumpcloud-token-url-us "http://$fake/oauth2/token" --log-level warn >"$work/broker.log" 2>&1 &
pids+=($!)

for _ in $(seq 50); do
	"$work/grpcurl" -plaintext "$broker" grpc.health.v1.Health/Check >/dev/null 2>&1 && break
	sleep 0.2
done
"$work/grpcurl" -plaintext -d '{"account_id":"bench","jumpcloud_service_account":{"client_id":"demo-client","client_secret":"demo-secret","region":"REGION_US"}}' \
	"$broker" credbroker.v1.AccountService/CreateAccount >/dev/null

# run CALL DATA: prints "rps p50_ms p99_ms", failing on any non-OK answer.
run() {
	local out="$work/out.json"
	"$work/ghz" --insecure --call "$1" -d "$2" -c "$concurrency" -n "$requests" -O json "$broker" >"$out"
	local ok
	ok=$(grep -o '"OK":[0-9]*' "$out" | head -1 | cut -d: -f2)
	if [ "${ok:-0}" != "$requests" ]; then
		echo "bench: $1 answered OK to ${ok:-0} of $requests calls" >&2
		exit 1
	fi
	local rps p50 p99
	rps=$(grep -o '"rps":[0-9.]*' "$out" | cut -d: -f2)
	p50=$(grep -o '"percentage":50,"latency":[0-9]*' "$out" | cut -d: -f3)
	p99=$(grep -o '"percentage":99,"latency":[0-9]*' "$out" | cut -d: -f3)
	awk -v r="$rps" -v a="$p50" -v b="$p99" 'BEGIN { printf "%.0f %.3f %.3f\n", r, a / 1e6, b / 1e6 }'
}

health_call=grpc.health.v1.Health/Check
token_call=credbroker.v1.TokenService/GetToken
token_data='{"name":"accounts/bench"}'

echo "warming up..."
run "$health_call" '{}' >/dev/null
run "$token_call" "$token_data" >/dev/null

printf "%-6s %-12s %10s %9s %9s\n" round call rps p50_ms p99_ms
health_total=0
token_total=0
for round in $(seq "$rounds"); do
	read -r hr hp50 hp99 < <(run "$health_call" '{}')
	read -r tr tp50 tp99 < <(run "$token_call" "$token_data")
	printf "%-6s %-12s %10s %9s %9s\n" "$round" Health/Check "$hr" "$hp50" "$hp99" "$round" GetToken "$tr" "$tp50" "$tp99"
	health_total=$((health_total + hr))
	token_total=$((token_total + tr))
done
awk -v t="$token_total" -v h="$health_total" -v c="$concurrency" -v n="$rounds" \
	'BEGIN { printf "GetToken / Health.Check throughput over %d rounds at %d callers: %.3f (target >= 0.9)\n", n, c, t / h }'
