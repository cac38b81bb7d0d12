#!/usr/bin/env bash
# The egress proxy against a bare, well-tuned httputil.ReverseProxy hop
# (bench/barehop: no authentication, no audit, no log, idle connections
# kept for every caller) to the same upstream, in the same run, with hey at
# 50 callers over keep-alive connections on loopback. The proxied GETs
# carry a caller key, pass the grant check and the rate limiter, get the
# account's API key injected, are logged (at info, as deployed) and written
# to the durable audit trail. For each it measures throughput, median
# latency, and the hop's own CPU per call (from /proc/PID/stat).
#
# Two upstreams: one that answers at once, where the ratios are what the
# proxy's work costs against a hop that does none; and one that takes
# BENCH_API_DELAY (default 20ms) per answer, as a real API does, where the
# figure is the latency the broker adds over the bare hop to that API (any
# second hop adds its own: calling the API directly is shown beside them).
# Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${BENCH_REQUESTS:-40000}
slow_requests=${BENCH_SLOW_REQUESTS:-10000} # at about 2,000 a second
concurrency=${BENCH_CONCURRENCY:-50}
rounds=${BENCH_ROUNDS:-5} # medians of 5: a VM neighbour can disturb one round
broker=127.0.0.1:${BENCH_BROKER_PORT:-15061}
proxy=127.0.0.1:${BENCH_PROXY_PORT:-15062}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18095}
slow=127.0.0.1:${BENCH_SLOW_FAKE_PORT:-18096}
bare=127.0.0.1:${BENCH_BARE_PORT:-18097}
slow_bare=127.0.0.1:${BENCH_SLOW_BARE_PORT:-18098}
delay=${BENCH_API_DELAY:-20ms}
# An API key as long as JumpCloud's (jca_ and 40 characters): the proxy
# checks every answer's headers for it in any form, which costs more the
# longer the key.
api_key=jca_$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')

source bench/lib.sh
go build -o "$work/hey" github.com/rakyll/hey
go build -o "$work/barehop" ./bench/barehop

"$work/credbroker" fake-jumpcloud --listen "$fake" --api-key "$api_key" >"$work/fake.log" 2>&1 &
pids+=($!)
"$work/credbroker" fake-jumpcloud --listen "$slow" --api-key "$api_key" --api-delay "$delay" >"$work/slow.log" 2>&1 &
pids+=($!)
"$work/barehop" --listen "$bare" --upstream "http://$fake" >"$work/barehop.log" 2>&1 &
bare_pid=$!
pids+=($bare_pid)
"$work/barehop" --listen "$slow_bare" --upstream "http://$slow" >"$work/slow-barehop.log" 2>&1 &
pids+=($!)
# The US region's API answers at once, the EU region's after $delay.
"$work/credbroker" serve --listen "$broker" --ops-listen off --hub-listen off --proxy-listen "$proxy" --data-dir "$work/data" \
	--rate-limit 1000000 --rate-burst 1000000 --log-level info \
	--jumpcloud-api-url-us "http://$fake/api" --jumpcloud-api-url-eu "http://$slow/api" \
	>"$work/broker.out" 2>"$work/broker.log" &
broker_pid=$!
pids+=($broker_pid)
admin="authorization: Bearer $(bootstrap_key)"
key=$("$work/grpcurl" -plaintext -H "$admin" -d '{"key_id":"bench","caller_key":{"role":"ROLE_CALLER"}}' \
	"$broker" credbroker.v1.CallerService/CreateCallerKey | grep -o 'cbk_[A-Za-z0-9_-]*')
for account in instant:REGION_US api-like:REGION_EU; do
	"$work/grpcurl" -plaintext -H "$admin" -d "{\"account_id\":\"${account%%:*}\",\"jumpcloud_api_key\":{\"api_key\":\"$api_key\",\"region\":\"${account##*:}\"}}" \
		"$broker" credbroker.v1.AccountService/CreateAccount >/dev/null
	"$work/grpcurl" -plaintext -H "$admin" -d "{\"name\":\"accounts/${account%%:*}\",\"principal\":\"callerKeys/bench\"}" \
		"$broker" credbroker.v1.AccountService/AddAccountGrant >/dev/null
done

# run URL HEADER N PID: prints "rps p50_ms cpu_us_per_call" (the CPU of
# process PID, or 0 for none), failing on any answer but 200.
run() {
	local out="$work/out.txt" before=0 after=0 ok
	[ "$4" != 0 ] && before=$(cpu_us "$4")
	"$work/hey" -n "$3" -c "$concurrency" -H "$2" "$1" >"$out"
	[ "$4" != 0 ] && after=$(cpu_us "$4")
	ok=$(awk '/^ *\[200\][[:space:]]+[0-9]+ responses/ { print $2 }' "$out") # the status line, not a histogram bucket of 200
	if [ "${ok:-0}" != "$3" ]; then
		echo "bench: $1 answered 200 to ${ok:-0} of $3 calls" >&2
		cat "$out" >&2
		exit 1
	fi
	awk -v cpu=$((after - before)) -v n="$3" '/Requests\/sec:/ { rps = $2 } /50%% in/ { p50 = $3 }
		END { printf "%.0f %.3f %.1f\n", rps, p50 * 1000, cpu / n }' "$out"
}

api="/v2/systems?limit=10"
direct_key="x-api-key: $api_key"
caller_key="Proxy-Authorization: Bearer $key"

# Against the instant upstream: the bare hop, then the broker's proxy.
run "http://$bare/api$api" "$direct_key" "$requests" 0 >/dev/null # warm up both
run "http://$proxy/v1/accounts/instant/proxy$api" "$caller_key" "$requests" 0 >/dev/null
printf '\nupstream answering at once, %d callers, %d GETs a round:\n%-6s %-9s %9s %9s %12s\n' "$concurrency" "$requests" round hop rps p50_ms cpu_us/call
br=() bc=() pr=() pc=()
for round in $(seq "$rounds"); do
	read -r a b c < <(run "http://$bare/api$api" "$direct_key" "$requests" "$bare_pid")
	br+=("$a") bc+=("$c")
	printf '%-6s %-9s %9s %9s %12s\n' "$round" bare "$a" "$b" "$c"
	read -r a b c < <(run "http://$proxy/v1/accounts/instant/proxy$api" "$caller_key" "$requests" "$broker_pid")
	pr+=("$a") pc+=("$c")
	printf '%-6s %-9s %9s %9s %12s\n' "$round" broker "$a" "$b" "$c"
done
cpu=$(ratio "$(median "${pc[@]}")" "$(median "${bc[@]}")")
rps=$(ratio "$(median "${pr[@]}")" "$(median "${br[@]}")")

# Against the slow upstream: straight to it, through the bare hop, then
# through the broker.
run "http://$slow/api$api" "$direct_key" "$slow_requests" 0 >/dev/null
run "http://$slow_bare/api$api" "$direct_key" "$slow_requests" 0 >/dev/null
printf '\nupstream answering after %s, %d callers, %d GETs a round:\n%-6s %-9s %9s %9s\n' "$delay" "$concurrency" "$slow_requests" round path rps p50_ms
dp=() bp=() pp=()
for round in $(seq "$rounds"); do
	for path in direct bare broker; do
		case $path in
		direct) read -r a b _ < <(run "http://$slow/api$api" "$direct_key" "$slow_requests" 0) && dp+=("$b") ;;
		bare) read -r a b _ < <(run "http://$slow_bare/api$api" "$direct_key" "$slow_requests" 0) && bp+=("$b") ;;
		broker) read -r a b _ < <(run "http://$proxy/v1/accounts/api-like/proxy$api" "$caller_key" "$slow_requests" 0) && pp+=("$b") ;;
		esac
		printf '%-6s %-9s %9s %9s\n' "$round" "$path" "$a" "$b"
	done
done
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
added=$(minus "$(median "${pp[@]}")" "$(median "${bp[@]}")")
bare_added=$(minus "$(median "${bp[@]}")" "$(median "${dp[@]}")")

echo
figure proxy_cpu "Proxied GET CPU per call / bare hop's" "${cpu}x ($(median "${pc[@]}") / $(median "${bc[@]}") µs)" "<= 1.15x" "$(meets "$cpu" "<=" 1.15)"
figure proxy_rps "Proxied GET throughput / bare hop's, $concurrency callers" "${rps}x" ">= 0.85x" "$(meets "$rps" ">=" 0.85)"
figure proxy_latency "Latency the proxy adds to a $delay API over the bare hop's, p50, $concurrency callers" "$added ms (the bare hop adds $bare_added ms to calling the API directly)" "< 1 ms" "$(meets "$added" "<=" 0.999)"
