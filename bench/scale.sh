#!/usr/bin/env bash
# One broker on bbolt with many accounts, as an MSP with one account per
# customer organisation has: BENCH_ACCOUNTS (default 100,000) JumpCloud
# service accounts linked through the API (each proved against the
# JumpCloud stand-in, which answers at once) by bench/scale, 64 at a time;
# then a page of 100 accounts listed over and over from a warm client, with
# and without a state filter; the broker's resident memory and database
# size; a restart: the time from start to /readyz answering ready, and the
# memory after it; and the background renewal of every token, all fetched
# within the minute of linking: the stand-in issues tokens that live
# BENCH_TOKEN_TTL (5 minutes; the broker renews them 30 s before expiry,
# --refresh-margin, an hour-long token's 5 minutes scaled down) and counts,
# once every first token has expired, the tokens that lapsed, the renewals
# made with more than half a token's life ahead, the most requests at once
# and in one second. Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

accounts=${BENCH_ACCOUNTS:-100000}
pages=${BENCH_PAGES:-300}
ttl_s=${BENCH_TOKEN_TTL:-300}
margin=30s
concurrency=16
broker=127.0.0.1:${BENCH_BROKER_PORT:-15091}
ops=127.0.0.1:${BENCH_OPS_PORT:-15093}
fake=127.0.0.1:${BENCH_FAKE_PORT:-18105}

source bench/lib.sh
go build -o "$work/scale" ./bench/scale

"$work/credbroker" fake-jumpcloud --listen "$fake" --any-client --token-ttl "${ttl_s}s" >"$work/fake.log" 2>&1 &
pids+=($!)

# serve: starts the broker on $work/data; sets broker_pid and ready_s, the
# seconds from its start to /readyz answering ready.
serve() {
	local start
	start=$(date +%s.%N)
	"$work/credbroker" serve --listen "$broker" --ops-listen "$ops" --hub-listen off --proxy-listen off --data-dir "$work/data" \
		--rate-limit -1 --refresh-margin "$margin" --refresh-concurrency "$concurrency" --jumpcloud-token-url-us "http://$fake/oauth2/token" >>"$work/broker.out" 2>>"$work/broker.log" &
	broker_pid=$!
	pids+=($broker_pid)
	for _ in $(seq 600); do
		if curl -sf "http://$ops/readyz" >/dev/null; then
			ready_s=$(seconds_since "$start")
			return
		fi
		sleep 0.01
	done
	echo "bench: the broker did not become ready" >&2
	cat "$work/broker.log" >&2
	exit 1
}

serve
key=$(grep -o 'cbk_[A-Za-z0-9_-]*' "$work/broker.out")
echo "linking $accounts accounts..."
read -r _ _ link_rate < <("$work/scale" -addr "$broker" -admin-key "$key" -link "$accounts")
linked_at=$(date +%s)
curl -sf -X POST "http://$fake/fake/renewals" >/dev/null # peaks from here on: renewals, not linking
echo "linked at $link_rate accounts/s; listing pages of 100..."
"$work/scale" -addr "$broker" -admin-key "$key" -list "$pages" >"$work/list-1"
rss_linked=$(rss_mb "$broker_pid")
db_mb=$(du -m "$work/data/credbroker.db" | cut -f1)

kill -TERM "$broker_pid"
wait "$broker_pid" 2>/dev/null || true
serve
sleep 2 # the broker gives back what the start read and left (see Serve)
rss_ready=$(rss_mb "$broker_pid")
"$work/scale" -addr "$broker" -admin-key "$key" -list "$pages" >"$work/list-2"
rss_listed=$(rss_mb "$broker_pid")
rss_listed_file=$(rss_mb "$broker_pid" RssFile)
cat "$work/list-1" "$work/list-2"

# Every token fetched while linking has expired $((ttl_s + 15)) s after the last was.
wait_s=$((linked_at + ttl_s + 15 - $(date +%s)))
echo "waiting ${wait_s}s for every first token to expire (renewals under way)..."
if [ "$wait_s" -gt 0 ]; then sleep "$wait_s"; fi
read -r _ issued clients renewed lapsed expired early peak_flight peak_s < <("$work/scale" -renewals "$fake")
echo "renewals: issued $issued to $clients clients, renewed $renewed, lapsed $lapsed, expired now $expired, early $early, at most $peak_flight at once and $peak_s in a second"

# list_ms STATE: "p99 (p50)" of the listing after the restart.
list_ms() { awk -v s="$1" '$2 == s { printf "%s ms (p50 %s ms)", $4, $3 }' "$work/list-2"; }
p99() { awk -v s="$1" '$2 == s { print $4 }' "$work/list-2"; }

echo
figure scale_link "Linking accounts through the API, instant provider" "$link_rate/s" ">= 1,000/s" "$(meets "$link_rate" ">=" 1000)"
figure scale_restart "Restart to ready, $accounts accounts" "$ready_s s" "< 2 s" "$(meets "$ready_s" "<=" 1.99)"
figure scale_rss "Resident memory, $accounts accounts (after restart, listing)" "$rss_listed MB, $rss_listed_file of it the database's pages ($rss_ready once ready; $rss_linked linking)" "< 300 MB" "$(meets "$rss_listed" "<=" 299)"
figure scale_db "Database size, $accounts accounts" "$db_mb MB" "" ""
figure scale_list "ListAccounts page of 100, p99, warm client" "$(list_ms ACCOUNT_STATE_UNSPECIFIED)" "< 5 ms" "$(meets "$(p99 ACCOUNT_STATE_UNSPECIFIED)" "<=" 4.99)"
figure scale_list_state "ListAccounts page of 100 in a state, p99, warm client" "$(list_ms ACCOUNT_STATE_ACTIVE)" "< 5 ms" "$(meets "$(p99 ACCOUNT_STATE_ACTIVE)" "<=" 4.99)"
renewals_ok=$([ "$lapsed" = 0 ] && [ "$expired" = 0 ] && [ "$early" = 0 ] && [ "$clients" = "$accounts" ] && [ "$peak_flight" -le "$concurrency" ] && echo met || echo "NOT met")
figure scale_refresh "Background renewal, $accounts tokens fetched within the linking's minute" "$lapsed lapsed, $expired expired, $early early; $renewed renewals, at most $peak_flight at once, $peak_s/s at peak (linking: $link_rate/s)" "0 lapsed or early, <= $concurrency at once" "$renewals_ok"
