package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
)

// retryInfo is the RetryInfo delay of a status, or 0 if it has none.
func retryInfo(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// errorMetadata is the metadata of a status's ErrorInfo.
func errorMetadata(st *status.Status) map[string]string {
	for _, d := range st.Details() {
		if ei, ok := d.(*errdetails.ErrorInfo); ok {
			return ei.GetMetadata()
		}
	}
	return nil
}

// eventually polls cond until it holds, failing the test after 10s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitFor(t, 10*time.Second, func() error {
		if cond() {
			return nil
		}
		return errors.New(what)
	})
}

// A caller cannot flip an API-key account to NEEDS_ATTENTION by proxying to
// a path that answers 401: the broker checks the key with GET
// /organizations, at most once per interval, and only a rejection there
// changes the state.
func TestProxied401DoesNotFlipAPIKeyAccount(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.ForcedInterval = time.Hour
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/v2/unauthorized") {
			http.Error(w, `{"message":"Unauthorized"}`, http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{}`)
	}))
	state := func() *credbrokerv1.Account {
		resp, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/keyed"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAccount()
	}
	checks := b.fake.OrganizationChecks()
	for i := range 50 {
		if resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/unauthorized/"+strconv.Itoa(i), b.keys.svc, nil, nil); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("HTTP %d %s, want the API's 401", resp.StatusCode, body)
		}
		if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
			t.Fatalf("after %d proxied 401s: %v", i+1, a)
		}
	}
	eventually(t, "the key's check", func() bool { return b.fake.OrganizationChecks() > checks })
	if n := b.fake.OrganizationChecks() - checks; n != 1 {
		t.Fatalf("50 proxied 401s made %d checks of the key, want 1 (one per interval)", n)
	}
	if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("after the key's check: %v", a)
	}

	// The key really is rejected now: once the interval has passed (here:
	// a restart), the next 401 is confirmed and the account needs attention.
	b.fake.RevokeAPIKey(apiKey)
	b = b.restart(t)
	b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	eventually(t, "NEEDS_ATTENTION", func() bool {
		a := state()
		return a.GetState() == credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION &&
			a.GetStateReason() == credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED
	})
}

// fromAddress dials from another loopback address, so that a test's
// attacker is a peer of its own.
func fromAddress(ip string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return d.DialContext
}

// Thousands of calls without valid credentials (none, unknown and revoked
// caller keys; gRPC and proxy) from one address, against a trail bounded to
// 500 events, leave every earlier event in the trail: they are throttled
// before authentication and recorded as a few aggregated events whose
// counts add up to the refused calls; the address's later calls, even with
// a valid key, wait; other addresses are unaffected.
func TestUnauthenticatedFloodKeepsTheAuditTrail(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Audit.MaxEvents = 500
	cfg.Gate.UnauthenticatedRateLimit = 0.1 // the flood's address stays throttled until the test ends
	server.ShortenAuditIntervals(&cfg, 50*time.Millisecond, 10*time.Millisecond)
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()

	// Admin changes whose events must stay.
	b.link(t, "acme")
	revoked := b.createKey(t, "gone", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	b.grant(t, "acme", "callerKeys/gone")
	if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/gone"}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		b.grant(t, "acme", fmt.Sprintf("spiffe://test/service-%d", i))
	}
	trail := func() []*credbrokerv1.AuditEvent {
		var all []*credbrokerv1.AuditEvent
		req := &credbrokerv1.ListAuditEventsRequest{PageSize: 1000}
		for {
			resp, err := b.audit.ListAuditEvents(ctx, req)
			if err != nil {
				t.Fatal(err)
			}
			all = append(all, resp.GetEvents()...)
			if req.PageToken = resp.GetNextPageToken(); req.PageToken == "" {
				return all
			}
		}
	}
	earlier := trail()
	if len(earlier) < 15 {
		t.Fatalf("%d events before the flood, want the admin changes' 15 or more", len(earlier))
	}

	// The flood, from 127.0.0.2.
	const attacker = "127.0.0.2"
	dial := func(key string) credbrokerv1.TokenServiceClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return fromAddress(attacker)(ctx, "tcp", addr)
		})}
		if key != "" {
			opts = append(opts, grpc.WithPerRPCCredentials(client.CallerKey(key)))
		}
		conn, err := grpc.NewClient(b.addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return credbrokerv1.NewTokenServiceClient(conn)
	}
	clients := []credbrokerv1.TokenServiceClient{dial(""), dial("cbk_unknown_" + strings.Repeat("x", 40)), dial(revoked)}
	proxy := &http.Client{Transport: &http.Transport{DialContext: fromAddress(attacker)}}
	var unauthenticated, exhausted atomic.Int64
	count := func(code codes.Code) {
		switch code {
		case codes.Unauthenticated:
			unauthenticated.Add(1)
		case codes.ResourceExhausted:
			exhausted.Add(1)
		default:
			t.Errorf("a call without valid credentials got %v", code)
		}
	}
	var wg sync.WaitGroup
	for w := range 6 { // each client twice: 3,000 calls without and 3,000 with a bad key
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := clients[w%3]
			for i := range 1000 {
				if i%100 == 0 { // a few proxied calls
					req, _ := http.NewRequest(http.MethodGet, b.proxyURL+"/v1/accounts/acme/proxy/v2/systems", nil)
					if w%3 == 2 {
						req.Header.Set("Proxy-Authorization", "Bearer "+revoked)
					}
					resp, err := proxy.Do(req)
					if err != nil {
						t.Error(err)
						return
					}
					resp.Body.Close()
					count(map[int]codes.Code{http.StatusUnauthorized: codes.Unauthenticated, http.StatusTooManyRequests: codes.ResourceExhausted}[resp.StatusCode])
					continue
				}
				_, err := c.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
				count(status.Code(err))
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Even a valid key waits while its address's budget is used up.
	_, err := dial(b.keys.svc).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if st := wantCode(t, err, codes.ResourceExhausted, "RATE_LIMITED"); retryInfo(st) <= 0 {
		t.Fatalf("no RetryInfo: %v", st.Details())
	}
	exhausted.Add(1)
	if unauthenticated.Load() > 40 || exhausted.Load() < 5900 {
		t.Fatalf("%d UNAUTHENTICATED and %d RESOURCE_EXHAUSTED answers; want the address throttled after its burst of 20", unauthenticated.Load(), exhausted.Load())
	}

	// The refusals are tallied into aggregated events.
	tallied := map[string]int64{}
	var aggregated []*credbrokerv1.AuditEvent
	eventually(t, "aggregated events counting every refused call", func() bool {
		clear(tallied)
		aggregated = aggregated[:0]
		for _, ev := range trail() {
			if ev.GetMethod() == "unauthenticated_calls" && ev.GetPeerAddress() == attacker {
				var n int64
				if _, err := fmt.Sscanf(ev.GetDetail(), "%d calls", &n); err != nil {
					t.Fatalf("detail %q: %v", ev.GetDetail(), err)
				}
				tallied[ev.GetCode()] += n
				aggregated = append(aggregated, ev)
			}
		}
		return tallied["UNAUTHENTICATED"] == unauthenticated.Load() && tallied["RESOURCE_EXHAUSTED"] == exhausted.Load()
	})
	var details strings.Builder
	for _, ev := range aggregated {
		details.WriteString(ev.GetDetail() + "\n")
	}
	for _, want := range []string{"/credbroker.v1.TokenService/GetToken", "proxy", "callerKeys/gone"} {
		if !strings.Contains(details.String(), want) {
			t.Errorf("the aggregated events do not name %q:\n%s", want, details.String())
		}
	}

	// Every earlier event is still there.
	key := func(ev *credbrokerv1.AuditEvent) string {
		return fmt.Sprint(ev.GetTime().AsTime().UnixNano(), ev.GetPrincipal(), ev.GetMethod(), ev.GetResource(), ev.GetCode(), ev.GetDetail())
	}
	kept := map[string]bool{}
	for _, ev := range trail() {
		kept[key(ev)] = true
	}
	for _, ev := range earlier {
		if !kept[key(ev)] {
			t.Fatalf("the flood pushed out %v", ev)
		}
	}
	// Nor did the throttled calls flood the log: one request line per
	// UNAUTHENTICATED answer, none per RESOURCE_EXHAUSTED one.
	if n := int64(strings.Count(logs.String(), `"peer":"`+attacker+`:`)); n != unauthenticated.Load() {
		t.Fatalf("%d log lines of the flood's calls, want %d (its UNAUTHENTICATED ones)", n, unauthenticated.Load())
	}
}

// A caller with a valid key cannot empty the audit trail either, by
// sending calls it knows are refused (no grant, not an admin, over its rate
// limit): beyond its allowance of events of their own, they are tallied.
// Nor by calls that succeed: pruning by count takes calls only, and admin
// changes go by age alone.
func TestRefusedCallsOfAValidKeyKeepTheAuditTrail(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Audit.MaxEvents = 300
	cfg.Gate.RateLimit = -1 // every call counts, none is refused for its rate
	server.ShortenAuditIntervals(&cfg, 50*time.Millisecond, 10*time.Millisecond)
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	b.link(t, "acme")
	admin := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{})
	if len(admin) < 3 {
		t.Fatalf("%d events before the flood", len(admin))
	}

	const calls = 1000
	var denied int
	svcAccounts := credbrokerv1.NewAccountServiceClient(b.dial(t, b.keys.svc, nil))
	for i := range calls {
		var err error
		if i%2 == 0 {
			_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/nope"})
		} else {
			_, err = svcAccounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{})
		}
		switch status.Code(err) {
		case codes.PermissionDenied:
			denied++
		default:
			t.Fatalf("call %d: %v", i, err)
		}
	}
	var tallied int
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		tallied = 0
		alone := 0
		for _, ev := range b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: svcPrincipal}) {
			if ev.GetMethod() == "refused_calls" {
				var n int
				fmt.Sscanf(ev.GetDetail(), "%d calls", &n)
				tallied += n
			} else {
				alone++
			}
		}
		if tallied+alone == calls {
			if alone > 25 {
				t.Fatalf("%d refused calls were audited alone, want at most the allowance of 20 and a few", alone)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls tallied and %d audited alone, want %d in all (%d denied)", tallied, alone, calls, denied)
		}
	}
	// Granted calls, more of them than the trail keeps, push out calls only.
	for range 400 {
		b.token(t, "acme")
	}
	var after []*credbrokerv1.AuditEvent
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if after = b.listAll(t, &credbrokerv1.ListAuditEventsRequest{}); len(after) <= cfg.Audit.MaxEvents+10 {
			break // pruned (this listing's own pages are audited too)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events after 10 s, want about %d", len(after), cfg.Audit.MaxEvents)
		}
	}
	kept := map[string]bool{}
	for _, ev := range after {
		kept[ev.GetTime().AsTime().String()+ev.GetMethod()+ev.GetResource()] = true
	}
	for _, ev := range admin {
		if !kept[ev.GetTime().AsTime().String()+ev.GetMethod()+ev.GetResource()] {
			t.Fatalf("the flood pushed out %s %s", ev.GetMethod(), ev.GetResource())
		}
	}
}
