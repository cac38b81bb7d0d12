#!/usr/bin/env bash
# The GetToken hot path against grpc.health.v1.Health/Check on the same
# broker in the same run, with ghz: plaintext on loopback, the caller
# proving itself with a caller key, rate limiting, the grant check, the
# request log (at info, as deployed) and the durable audit trail all on for
# GetToken; the health check is open, so the difference is the whole price
# of them. For each it measures the broker's own CPU per call (from
# /proc/PID/stat), throughput and median latency: at 1 caller (latency:
# every GetToken waits for one durable write of its audit event, measured
# beside it with bench/fsync), at 50 and at 500 callers (saturated: the
# ratios are what the work of each call costs). Everything runs on
# loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-40000}
rounds=${BENCH_ROUNDS:-3}
broker=127.0.0.1:${BENCH_BROKER_PORT:-15051}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18085}

source bench/lib.sh
go build -o "$work/ghz" github.com/bojand/ghz/cmd/ghz
read -r fsync_wall fsync_cpu < <(go run ./bench/fsync -dir "$work")
# A lone caller's GetToken writes its event about every half millisecond,
# not right after the write before it; such a write takes longer.
read -r lone_wall _ < <(go run ./bench/fsync -dir "$work" -gap 500us)

"$work/credbroker" fake-jumpcloud --listen "$fake" >"$work/fake.log" 2>&1 &
pids+=($!)
"$work/credbroker" serve --listen "$broker" --ops-listen off --hub-listen off --proxy-listen off --data-dir "$work/data" \
	--rate-limit 1000000 --rate-burst 1000000 --log-level info \
	--jumpcloud-token-url-us "http://$fake/oauth2/token" >"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
admin="authorization: Bearer $(bootstrap_key)"
"$work/grpcurl" -plaintext -H "$admin" -d '{"account_id":"bench","jumpcloud_service_account":{"client_id":"demo-client","client_secret":"demo-secret","region":"REGION_US"}}' \
	"$broker" credbroker.v1.AccountService/CreateAccount >/dev/null
key=$("$work/grpcurl" -plaintext -H "$admin" -d '{"key_id":"bench","caller_key":{"role":"ROLE_CALLER"}}' \
	"$broker" credbroker.v1.CallerService/CreateCallerKey | grep -o 'cbk_[A-Za-z0-9_-]*')
"$work/grpcurl" -plaintext -H "$admin" -d '{"name":"accounts/bench","principal":"callerKeys/bench"}' \
	"$broker" credbroker.v1.AccountService/AddAccountGrant >/dev/null
auth="{\"authorization\":\"Bearer $key\"}"

# run CALL DATA CALLERS N: prints "rps p50_ms cpu_us_per_call
# client_cpu_us_per_call" (the broker's CPU, and ghz's), failing on any
# answer but OK.
run() {
	local out="$work/out.json" before after client_before client_after ok
	before=$(cpu_us "$broker_pid")
	children_cpu client_before
	"$work/ghz" --insecure --metadata "$auth" --call "$1" -d "$2" -c "$3" -n "$4" -O json "$broker" >"$out"
	children_cpu client_after
	after=$(cpu_us "$broker_pid")
	ok=$(grep -o '"OK":[0-9]*' "$out" | head -1 | cut -d: -f2)
	if [ "${ok:-0}" != "$4" ]; then
		echo "bench: $1 answered OK to ${ok:-0} of $4 calls" >&2
		exit 1
	fi
	awk -v rps="$(grep -o '"rps":[0-9.]*' "$out" | cut -d: -f2)" \
		-v p50="$(grep -o '"percentage":50,"latency":[0-9]*' "$out" | cut -d: -f3)" \
		-v cpu=$((after - before)) -v client=$((client_after - client_before)) -v n="$4" \
		'BEGIN { printf "%.0f %.3f %.1f %.1f\n", rps, p50 / 1e6, cpu / n, client / n }'
}

health=(grpc.health.v1.Health/Check '{}')
token=(credbroker.v1.TokenService/GetToken '{"name":"accounts/bench"}')

# compare CALLERS N: rounds of Health/Check then GetToken; sets the
# medians h_rps h_p50 h_cpu h_client t_rps t_p50 t_cpu t_client.
compare() {
	local callers=$1 n=$2 hr=() hp=() hc=() hg=() tr=() tp=() tc=() tg=() a b c d
	run "${health[@]}" "$callers" "$n" >/dev/null # warm up both
	run "${token[@]}" "$callers" "$n" >/dev/null
	printf '\n%d callers, %d calls a round:\n%-6s %-13s %9s %9s %12s %12s\n' "$callers" "$n" round call rps p50_ms cpu_us/call ghz_us/call
	for round in $(seq "$rounds"); do
		read -r a b c d < <(run "${health[@]}" "$callers" "$n")
		hr+=("$a") hp+=("$b") hc+=("$c") hg+=("$d")
		printf '%-6s %-13s %9s %9s %12s %12s\n' "$round" Health/Check "$a" "$b" "$c" "$d"
		read -r a b c d < <(run "${token[@]}" "$callers" "$n")
		tr+=("$a") tp+=("$b") tc+=("$c") tg+=("$d")
		printf '%-6s %-13s %9s %9s %12s %12s\n' "$round" GetToken "$a" "$b" "$c" "$d"
	done
	h_rps=$(median "${hr[@]}") h_p50=$(median "${hp[@]}") h_cpu=$(median "${hc[@]}") h_client=$(median "${hg[@]}")
	t_rps=$(median "${tr[@]}") t_p50=$(median "${tp[@]}") t_cpu=$(median "${tc[@]}") t_client=$(median "${tg[@]}")
}


echo "one durable write (4 KiB, O_DSYNC) on this disk: ${fsync_wall} µs median, ${fsync_cpu} µs of CPU; ${lone_wall} µs median 500 µs after the one before"
compare 1 $((requests / 10))
added=$(awk -v t="$t_p50" -v h="$h_p50" 'BEGIN { printf "%.0f", (t - h) * 1000 }')
one_latency="$added µs ($t_p50 / $h_p50 ms)"
compare 50 "$requests"
cpu50=$(ratio "$t_cpu" "$h_cpu")
compare 500 "$requests"
cpu500=$(ratio "$t_cpu" "$h_cpu") rps500=$(ratio "$t_rps" "$h_rps")
# ghz shares the machine's cores with the broker: with both saturating
# them, throughput is at most the cores over the CPU a call costs the two.
bound500=$(awk -v hc="$h_cpu" -v hg="$h_client" -v tc="$t_cpu" -v tg="$t_client" 'BEGIN { printf "%.2f", (hc + hg) / (tc + tg) }')

echo
figure gettoken_cpu_500 "GetToken CPU per call / health check's, 500 callers" "${cpu500}x" "<= 1.30x" "$(meets "$cpu500" "<=" 1.30)"
figure gettoken_cpu_50 "GetToken CPU per call / health check's, 50 callers" "${cpu50}x" "<= 1.30x" "$(meets "$cpu50" "<=" 1.30)"
figure gettoken_cpu_us "GetToken / health check CPU per call, 500 callers" "$t_cpu / $h_cpu µs (ghz: $t_client / $h_client µs)" "" ""
figure gettoken_rps_500 "GetToken throughput / health check's, 500 callers" "${rps500}x (the CPU of broker and ghz allows ${bound500}x)" ">= 0.85x" "$(meets "$rps500" ">=" 0.85)"
figure gettoken_latency_1 "GetToken median latency over health check's, 1 caller" "$one_latency" "<= one fsync ($lone_wall µs as a lone caller's; $fsync_wall µs back to back)" "$(meets "$added" "<=" "$lone_wall")"
