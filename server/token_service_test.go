package server_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

func TestGetToken(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	tok := b.token(t, "acme")
	if tok.GetAccessToken() != b.fake.LastToken() || tok.GetTokenType() != "Bearer" || tok.GetApiBaseUrl() != b.cfg.Provider.JumpCloudAPIURLUS ||
		tok.GetHeaders()["x-org-id"] != orgID || len(tok.GetHeaders()) != 1 {
		t.Fatalf("GetToken: matches fake %v, type %q, api_base_url %q, headers %v", tok.GetAccessToken() == b.fake.LastToken(), tok.GetTokenType(), tok.GetApiBaseUrl(), tok.GetHeaders())
	}
	if ttl := time.Until(tok.GetExpireTime().AsTime()); ttl > time.Hour-30*time.Second || ttl < 50*time.Minute {
		t.Fatalf("expires in %v, want just under 59m30s", ttl)
	}
	// Linking fetched the token: getting it costs no request.
	if b.fake.Requests() != 1 {
		t.Fatalf("%d upstream requests, want 1", b.fake.Requests())
	}
	// Without org id: no headers.
	req := jumpCloudRequest("plain")
	req.GetJumpcloudServiceAccount().OrgId = ""
	if _, err := b.accounts.CreateAccount(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "plain", svcPrincipal)
	if h := b.token(t, "plain").GetHeaders(); len(h) != 0 {
		t.Fatalf("headers without org id = %v", h)
	}

	ctx := context.Background()
	for _, tc := range []struct {
		req   *credbrokerv1.GetTokenRequest
		code  codes.Code
		field string
	}{
		{&credbrokerv1.GetTokenRequest{Name: "accounts/nope"}, codes.PermissionDenied, ""}, // no grant: existence is not revealed
		{&credbrokerv1.GetTokenRequest{Name: "acme"}, codes.InvalidArgument, "name"},
		{&credbrokerv1.GetTokenRequest{Name: "accounts/ACME"}, codes.InvalidArgument, "name"},
		{&credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(-time.Second)}, codes.InvalidArgument, "min_ttl"},
		{&credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(2 * time.Hour)}, codes.OutOfRange, "MIN_TTL_TOO_LONG"},
	} {
		_, err := b.tokens.GetToken(ctx, tc.req)
		wantCode(t, err, tc.code, tc.field)
	}
}

// A caller looping GetToken with a min_ttl just under the tokens' lifetime
// gets one new token per --min-ttl-refresh-interval, and RESOURCE_EXHAUSTED
// with a RetryInfo otherwise; a min_ttl longer than the lifetime is
// OUT_OF_RANGE without any upstream request, also after a restart.
func TestMinTTLCannotForceUpstreamRequests(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.ForcedInterval = time.Hour
	cfg.Gate.RateLimit = -1 // only the min_ttl refresh interval refuses
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	ctx := context.Background()
	before := b.fake.Requests()
	// 2s under the lifetime: room for the one upstream request (and its
	// commit) that the call forcing a new token waits for, on a busy
	// machine too.
	const room = 2 * time.Second
	justUnderLifetime := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(time.Hour - 30*time.Second - room)}
	time.Sleep(room) // the linked token no longer lasts min_ttl
	calls, limited := 0, 0
	for ; calls < 500 && limited < 20; calls++ {
		_, err := b.tokens.GetToken(ctx, justUnderLifetime)
		if err == nil {
			time.Sleep(room) // until the new token, too, no longer lasts min_ttl
			continue
		}
		st := wantCode(t, err, codes.ResourceExhausted, "RATE_LIMITED")
		if retry := retryInfo(st); retry <= 0 || retry > time.Hour {
			t.Fatalf("RetryInfo %v, want within the hour's interval", retry)
		}
		limited++
	}
	if n := b.fake.Requests() - before; n != 1 || limited == 0 {
		t.Fatalf("%d calls forced %d upstream requests and %d were refused; want 1 and the rest refused", calls, n, limited)
	}

	tooLong := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(2 * time.Hour)}
	before = b.fake.Requests()
	for restarted := range 2 {
		if restarted == 1 {
			b = b.restart(t)
		}
		_, err := b.tokens.GetToken(ctx, tooLong)
		st := wantCode(t, err, codes.OutOfRange, "MIN_TTL_TOO_LONG")
		if got := errorMetadata(st)["max_ttl"]; got != "59m30s" {
			t.Fatalf("max_ttl = %q (restarted: %d), want 59m30s", got, restarted)
		}
	}
	if n := b.fake.Requests() - before; n != 0 {
		t.Fatalf("a min_ttl of 2h made %d upstream requests, want 0", n)
	}
}

// Callers that all need a fresh token share one upstream request.
func TestConcurrentGetTokenCoalesces(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	first := b.token(t, "acme").GetAccessToken()
	// The next token lives longer and takes a while, so all callers pile up on it.
	b.fake.SetTokenTTL(2 * time.Hour)
	b.fake.SetBehaviour(jumpcloudfake.Slow)
	b.fake.SetDelay(300 * time.Millisecond)
	time.Sleep(1100 * time.Millisecond) // the linked token now has less than 59m29s left
	before := b.fake.Requests()

	const callers = 200
	var wg sync.WaitGroup
	got := make([]string, callers)
	errs := make([]error, callers)
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)})
			got[i], errs[i] = resp.GetAccessToken(), err
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || got[i] == first || got[i] != got[0] {
			t.Fatalf("caller %d: %v; want the one new token", i, errs[i])
		}
	}
	if n := b.fake.Requests() - before; n != 1 {
		t.Fatalf("%d upstream requests for %d callers, want 1", n, callers)
	}
}

func TestAccountHealthStates(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	b.link(t, "healthy")
	ctx := context.Background()
	forceRefresh := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)}
	state := func() *credbrokerv1.Account {
		resp, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAccount()
	}
	time.Sleep(1100 * time.Millisecond)

	b.fake.SetBehaviour(jumpcloudfake.ServerError)
	_, err := b.tokens.GetToken(ctx, forceRefresh)
	wantCode(t, err, codes.Unavailable, "PROVIDER_UNAVAILABLE")
	if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED || a.GetLastError().GetReason() != credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE ||
		a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_UNAVAILABLE {
		t.Fatalf("after 500: %v", a)
	}
	// Degraded still serves the cached token.
	b.token(t, "acme")

	b = b.restart(t) // clears the retry gate; the state itself is kept
	if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_DEGRADED {
		t.Fatalf("after restart: %v", a)
	}
	b.fake.SetBehaviour(jumpcloudfake.RejectAll)
	_, err = b.tokens.GetToken(ctx, forceRefresh)
	st := wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
	a := state()
	if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION || a.GetLastError().GetProviderError() != "invalid_client" ||
		a.GetLastError().GetProviderErrorDescription() != "Client authentication failed." ||
		a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED {
		t.Fatalf("after 401: %v", a)
	}
	// Admins find such accounts by state or reason.
	for _, req := range []*credbrokerv1.ListAccountsRequest{
		{State: credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION},
		{StateReason: credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED},
		{State: credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION, PageSize: 1},
	} {
		resp, err := b.accounts.ListAccounts(ctx, req)
		if err != nil || len(resp.GetAccounts()) != 1 || resp.GetAccounts()[0].GetName() != "accounts/acme" || resp.GetNextPageToken() != "" {
			t.Fatalf("ListAccounts(%v) = %v, %v; want acme alone", req, resp, err)
		}
	}
	if resp, err := b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{State: credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE}); err != nil || len(resp.GetAccounts()) != 1 {
		t.Fatalf("active accounts: %v, %v; want healthy alone", resp, err)
	}
	_, err = b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{StateReason: 99})
	wantCode(t, err, codes.InvalidArgument, "state_reason")
	// No retry storm: asking again answers from the recorded failure.
	requests := b.fake.Requests()
	for range 10 {
		_, err = b.tokens.GetToken(ctx, forceRefresh)
		wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
	}
	if b.fake.Requests() != requests {
		t.Fatalf("%d more upstream requests after rejection, want 0", b.fake.Requests()-requests)
	}
	if st.Message() == "" {
		t.Fatal("empty message")
	}

	// The admin fixes it; after a restart (which opens the gate) the account is active again.
	b.fake.SetBehaviour(jumpcloudfake.Normal)
	b = b.restart(t)
	if _, err := b.tokens.GetToken(ctx, forceRefresh); err != nil {
		t.Fatal(err)
	}
	if a := state(); a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || a.GetLastError() != nil ||
		a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_UNSPECIFIED {
		t.Fatalf("after recovery: %v", a)
	}

	// Every change of state is in the audit trail, oldest last.
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/acme", Principal: "credbroker"})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ev := range events.GetEvents() {
		if ev.GetMethod() == "account_state" {
			from, _, _ := strings.Cut(ev.GetDetail(), ":")
			got = append(got, from)
		}
	}
	want := []string{"needs_attention -> active", "degraded -> needs_attention", "active -> degraded"}
	if !slices.Equal(got, want) {
		t.Fatalf("state changes in the audit trail: %q, want %q", got, want)
	}
}

// The health check and server reflection need no identity (grpcurl
// lists and calls the health check as is); any other call without one is
// refused by the gate, saying what to send.
func TestHealthAndReflection(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	anonymous := b.dial(t, "", nil)
	resp, err := healthpb.NewHealthClient(anonymous).Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", resp, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(anonymous).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	list, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	services := map[string]bool{}
	for _, s := range list.GetListServicesResponse().GetService() {
		services[s.GetName()] = true
	}
	for _, want := range []string{"credbroker.v1.AccountService", "credbroker.v1.TokenService", "grpc.health.v1.Health"} {
		if !services[want] {
			t.Errorf("reflection does not list %s: %v", want, services)
		}
	}
	_, err = credbrokerv1.NewTokenServiceClient(anonymous).GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if st := wantCode(t, err, codes.Unauthenticated, ""); !strings.Contains(st.Message(), "authorization: Bearer") {
		t.Fatalf("a call without an identity: %s", st.Message())
	}
}

// One caller's deadline must not cancel the upstream request others share.
func TestCallerDeadlineDoesNotCancelSharedFetch(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "acme")
	b.fake.SetTokenTTL(2 * time.Hour)
	b.fake.SetBehaviour(jumpcloudfake.Slow)
	b.fake.SetDelay(500 * time.Millisecond)
	time.Sleep(1100 * time.Millisecond)
	before := b.fake.Requests()
	forceRefresh := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)}

	patient := make(chan error, 1)
	go func() {
		_, err := b.tokens.GetToken(context.Background(), forceRefresh)
		patient <- err
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := b.tokens.GetToken(ctx, forceRefresh)
	wantCode(t, err, codes.DeadlineExceeded, "")
	if err := <-patient; err != nil {
		t.Fatalf("the patient caller failed with the impatient one: %v", err)
	}
	if n := b.fake.Requests() - before; n != 1 {
		t.Fatalf("%d upstream requests, want 1", n)
	}
}

// On shutdown, calls in flight finish before the store closes.
func TestGracefulShutdownFinishesInFlightCalls(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.fake.SetBehaviour(jumpcloudfake.Slow)
	b.fake.SetDelay(500 * time.Millisecond)
	result := make(chan error, 1)
	go func() {
		_, err := b.accounts.CreateAccount(context.Background(), jumpCloudRequest("acme"))
		result <- err
	}()
	waitUntil(t, func() bool { return b.fake.Requests() == 1 }) // the call is in flight
	stopped := make(chan struct{})
	go func() {
		b.serveCancel()
		close(stopped)
	}()
	if err := <-result; err != nil {
		t.Fatalf("in-flight CreateAccount failed during shutdown: %v", err)
	}
	<-stopped
	b.stop()
	// The account it stored survived the shutdown.
	b = startWith(t, b.cfg, b.fake, b.logs)
	b.fake.SetBehaviour(jumpcloudfake.Normal)
	b.grant(t, "acme", svcPrincipal)
	b.token(t, "acme")
}

// waitUntil polls cond; the test's own timeout bounds it.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for !cond() {
		time.Sleep(2 * time.Millisecond)
	}
}
