#!/usr/bin/env bash
# GetToken cache-hit throughput against grpc.health.v1.Health/Check on the
# same broker in the same run, with ghz, over two transports: mTLS (the
# caller proves itself with a client certificate) and TLS with a caller key.
# Each runs at 50 concurrent callers, where the time a call waits for the
# audit fsync shows, and at 500, where the broker is saturated and the
# ratio is what the work of each call costs. Authentication, the grant check, the rate limiter
# and the durable audit trail are all on for GetToken; the health check is
# open, so the ratio is the whole price of them. Absolute numbers depend on
# the machine. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-60000}
concurrencies=${BENCH_CONCURRENCY:-50 500}
rounds=${BENCH_ROUNDS:-3}
broker=127.0.0.1:${BENCH_BROKER_PORT:-15051}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18085}

source bench/lib.sh
go build -o "$work/ghz" github.com/bojand/ghz/cmd/ghz
certs="$work/certs"
"$work/credbroker" dev-certs --dir "$certs" >/dev/null

"$work/credbroker" fake-jumpcloud --listen "$fake" >"$work/fake.log" 2>&1 &
pids+=($!)
"$work/credbroker" serve --listen "$broker" --ops-listen off --hub-listen off --proxy-listen off --data-dir "$work/data" \
	--tls-cert "$certs/server.pem" --tls-key "$certs/server-key.pem" --client-ca "$certs/ca.pem" \
	--bootstrap-admin-principal spiffe://credbroker.test/admin \
	--rate-limit 1000000 --rate-burst 1000000 \
	--jumpcloud-token-url-us "http://$fake/oauth2/token" --log-level warn >"$work/broker.log" 2>&1 &
pids+=($!)

admin=(-cacert "$certs/ca.pem" -cert "$certs/admin.pem" -key "$certs/admin-key.pem")
for _ in $(seq 50); do
	"$work/grpcurl" "${admin[@]}" "$broker" grpc.health.v1.Health/Check >/dev/null 2>&1 && break
	sleep 0.2
done
"$work/grpcurl" "${admin[@]}" -d '{"account_id":"bench","jumpcloud_service_account":{"client_id":"demo-client","client_secret":"demo-secret","region":"REGION_US"}}' \
	"$broker" credbroker.v1.AccountService/CreateAccount >/dev/null
key=$("$work/grpcurl" "${admin[@]}" -d '{"key_id":"bench","caller_key":{"role":"ROLE_CALLER"}}' \
	"$broker" credbroker.v1.CallerService/CreateCallerKey | grep -o 'cbk_[A-Za-z0-9_-]*')
for principal in spiffe://credbroker.test/billing callerKeys/bench; do
	"$work/grpcurl" "${admin[@]}" -d "{\"name\":\"accounts/bench\",\"principal\":\"$principal\"}" \
		"$broker" credbroker.v1.AccountService/AddAccountGrant >/dev/null
done

mtls=(--cacert "$certs/ca.pem" --cert "$certs/billing.pem" --key "$certs/billing-key.pem")
auth="{\"authorization\":\"Bearer $key\"}"
keyed=(--cacert "$certs/ca.pem" --metadata "$auth" --reflect-metadata "$auth")

# run CALL DATA GHZ_ARGS... (with $concurrency callers): prints "rps p50_ms p99_ms", failing on any non-OK answer.
run() {
	local call=$1 data=$2
	shift 2
	local out="$work/out.json"
	"$work/ghz" "$@" --call "$call" -d "$data" -c "$concurrency" -n "$requests" -O json "$broker" >"$out"
	local ok
	ok=$(grep -o '"OK":[0-9]*' "$out" | head -1 | cut -d: -f2)
	if [ "${ok:-0}" != "$requests" ]; then
		echo "bench: $call answered OK to ${ok:-0} of $requests calls" >&2
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

# compare NAME GHZ_ARGS...: rounds of Health/Check then GetToken over one transport.
compare() {
	local name=$1
	shift
	echo "== $name, $concurrency callers: warming up..."
	run "$health_call" '{}' "$@" >/dev/null
	run "$token_call" "$token_data" "$@" >/dev/null
	printf "%-6s %-12s %10s %9s %9s\n" round call rps p50_ms p99_ms
	local health_total=0 token_total=0 hr hp50 hp99 tr tp50 tp99
	for round in $(seq "$rounds"); do
		read -r hr hp50 hp99 < <(run "$health_call" '{}' "$@")
		read -r tr tp50 tp99 < <(run "$token_call" "$token_data" "$@")
		printf "%-6s %-12s %10s %9s %9s\n" "$round" Health/Check "$hr" "$hp50" "$hp99" "$round" GetToken "$tr" "$tp50" "$tp99"
		health_total=$((health_total + hr))
		token_total=$((token_total + tr))
	done
	awk -v t="$token_total" -v h="$health_total" -v c="$concurrency" -v n="$rounds" -v name="$name" \
		'BEGIN { printf "%s: GetToken / Health.Check throughput over %d rounds at %d callers: %.3f (target >= 0.85)\n", name, n, c, t / h }'
}

for concurrency in $concurrencies; do
	compare "mTLS" "${mtls[@]}"
	compare "TLS + caller key" "${keyed[@]}"
done
events=$("$work/grpcurl" "${admin[@]}" -d '{"principal":"callerKeys/bench","page_size":1}' "$broker" credbroker.v1.AuditService/ListAuditEvents | grep -c '"code": "OK"' || true)
echo "audit trail holds GetToken events of callerKeys/bench: $([ "$events" -ge 1 ] && echo yes || echo NO)"
