package server_test

import (
	"context"
	"math"
	"net"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
)

// listAll pages through the audit trail with small pages.
func (b *broker) listAll(t *testing.T, req *credbrokerv1.ListAuditEventsRequest) []*credbrokerv1.AuditEvent {
	t.Helper()
	req.PageSize = 2
	var out []*credbrokerv1.AuditEvent
	for {
		resp, err := b.audit.ListAuditEvents(context.Background(), req)
		if err != nil {
			t.Fatalf("ListAuditEvents: %v", err)
		}
		out = append(out, resp.GetEvents()...)
		if resp.GetNextPageToken() == "" {
			return out
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// Every GetToken and every admin call leaves an event, durable across a
// restart, with the principal, method, resource, outcome and, for issued
// tokens, a fingerprint; filters and pages work.
func TestAuditTrail(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	start := time.Now()
	b.link(t, "acme")
	first := b.token(t, "acme")
	b.token(t, "acme")
	_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/ghost"})
	wantCode(t, err, codes.PermissionDenied, "")
	time.Sleep(1100 * time.Millisecond) // the linked token now has less than 59m29s left
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(59*time.Minute + 29*time.Second)})
	if err != nil {
		t.Fatal(err) // forces a new token
	}
	b.createKey(t, "k1", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/k1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.accounts.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: "accounts/acme", Principal: svcPrincipal}); err != nil {
		t.Fatal(err)
	}
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.PermissionDenied, "")
	b = b.restart(t)

	all := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{StartTime: timestamppb.New(start)})
	type row struct{ principal, method, resource, code string }
	var got []row
	for i := len(all) - 1; i >= 0; i-- { // oldest first
		e := all[i]
		got = append(got, row{e.GetPrincipal(), strings.TrimPrefix(e.GetMethod(), "/credbroker.v1."), e.GetResource(), e.GetCode()})
		if i > 0 && all[i-1].GetTime().AsTime().Before(e.GetTime().AsTime()) {
			t.Fatal("events are not newest first")
		}
		if !strings.HasPrefix(e.GetPeerAddress(), "127.0.0.1:") || e.GetTime() == nil {
			t.Errorf("event lacks peer or time: %v", e)
		}
	}
	want := []row{
		{"callerKeys/bootstrap-admin", "AccountService/CreateAccount", "accounts/acme", "OK"},
		{"callerKeys/bootstrap-admin", "AccountService/AddAccountGrant", "accounts/acme", "OK"},
		{svcPrincipal, "TokenService/GetToken", "accounts/acme", "OK"},
		{svcPrincipal, "TokenService/GetToken", "accounts/acme", "OK"},
		{svcPrincipal, "TokenService/GetToken", "accounts/ghost", "PERMISSION_DENIED"},
		{svcPrincipal, "TokenService/GetToken", "accounts/acme", "OK"},
		{"callerKeys/bootstrap-admin", "CallerService/CreateCallerKey", "callerKeys/k1", "OK"},
		{"callerKeys/bootstrap-admin", "CallerService/RevokeCallerKey", "callerKeys/k1", "OK"},
		{"callerKeys/bootstrap-admin", "AccountService/RemoveAccountGrant", "accounts/acme", "OK"},
		{svcPrincipal, "TokenService/GetToken", "accounts/acme", "PERMISSION_DENIED"},
	}
	if len(got) != len(want) {
		t.Fatalf("events since start:\n%v\nwant\n%v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %v, want %v", i, got[i], want[i])
		}
	}
	// Fingerprints: the same token, the same fingerprint; a new token, a new one; none for denials.
	fp := func(i int) string { return all[len(all)-1-i].GetTokenFingerprint() }
	if !strings.HasPrefix(fp(2), "hmac-sha256:") || len(fp(2)) != len("hmac-sha256:")+64 || fp(2) != fp(3) || fp(5) == fp(2) || fp(4) != "" || fp(0) != "" {
		t.Errorf("fingerprints: %q %q %q %q", fp(2), fp(3), fp(4), fp(5))
	}
	if strings.Contains(fp(2), first.GetAccessToken()) {
		t.Fatal("the fingerprint contains the token")
	}
	if d := all[len(all)-1-1].GetDetail(); d != "grant "+svcPrincipal {
		t.Errorf("grant event detail = %q", d)
	}

	// Filters.
	if n := len(b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/ghost"})); n != 1 {
		t.Errorf("events about accounts/ghost: %d, want 1", n)
	}
	if n := len(b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: svcPrincipal, Account: "accounts/acme"})); n != 4 {
		t.Errorf("events of svc about acme: %d, want 4", n)
	}
	mid := all[len(all)-1-5].GetTime() // the third GetToken OK
	if n := len(b.listAll(t, &credbrokerv1.ListAuditEventsRequest{StartTime: timestamppb.New(start), EndTime: mid})); n != 5 {
		t.Errorf("events before the sixth: %d, want 5", n)
	}
	_, err = b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "acme"})
	wantCode(t, err, codes.InvalidArgument, "account")
	_, err = b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{PageToken: "nope"})
	wantCode(t, err, codes.InvalidArgument, "page_token")
	_, err = b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{StartTime: mid, EndTime: timestamppb.New(start)})
	wantCode(t, err, codes.InvalidArgument, "end_time")

	// Each call has one line in the structured log, with its latency.
	if !regexp.MustCompile(`"msg":"request","principal":"callerKeys/svc","method":"/credbroker.v1.TokenService/GetToken","account":"accounts/ghost","code":"PERMISSION_DENIED","latency_ms":[0-9.]+,`).MatchString(b.logs.String()) {
		t.Errorf("the denied GetToken is not in the log:\n%s", b.logs.String())
	}
	if n := strings.Count(b.logs.String(), `"msg":"request","principal":"callerKeys/svc","method":"/credbroker.v1.TokenService/GetToken"`); n != 5 {
		t.Errorf("%d request lines of svc's GetToken calls, want 5", n)
	}
}

// Retention deletes the oldest events beyond the configured count.
func TestAuditRetention(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	for range 10 {
		b.token(t, "acme")
	}
	b.stop()
	cfg.Audit.MaxEvents = 4
	b = startWith(t, cfg, fake, logs) // pruning runs at start
	// Pruning by count takes the calls, oldest first; the admin changes
	// (bootstrap, the caller key, the account, its grant) stay, plus this
	// listing's own pages (each is audited).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		all := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{})
		var admin, tokens int
		for _, e := range all {
			switch e.GetMethod() {
			case "/credbroker.v1.TokenService/GetToken":
				tokens++
			case "bootstrap", "/credbroker.v1.CallerService/CreateCallerKey", "/credbroker.v1.AccountService/CreateAccount", "/credbroker.v1.AccountService/AddAccountGrant":
				admin++
			}
		}
		if admin != 4 {
			t.Fatalf("after pruning to 4: %d admin changes, want all 4", admin)
		}
		if tokens == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after pruning to 4: %d GetToken calls left, want 0 (%d events in all)", tokens, len(all))
		}
	}
}

// The first start creates one admin key; later starts do not. Removing the
// last admin identity is refused, and an admin principal is one only where
// client certificates are taken.
func TestBootstrapAndLastAdmin(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	if !strings.HasPrefix(b.keys.admin, "cbk_") {
		t.Fatal("no bootstrap admin key")
	}
	ctx := context.Background()
	_, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/bootstrap-admin"})
	wantCode(t, err, codes.FailedPrecondition, "LAST_ADMIN")
	_, err = b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: "callerKeys/svc"})
	wantCode(t, err, codes.InvalidArgument, "principal")
	if _, err := b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: "spiffe://test/ops"}); err != nil {
		t.Fatal(err)
	}
	// This broker takes no client certificates: the principal is no admin
	// anyone can act as.
	_, err = b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/bootstrap-admin"})
	wantCode(t, err, codes.FailedPrecondition, "LAST_ADMIN")
	if _, err := b.callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: "ops", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_ADMIN}}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/bootstrap-admin"}); err != nil {
		t.Fatalf("revoke with another admin present: %v", err)
	}
	_, err = b.callers.ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{})
	wantCode(t, err, codes.Unauthenticated, "")

	b.stop()
	again, err := server.New(b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again.BootstrapAdminKey() != "" {
		t.Fatal("a second start made another admin key")
	}
	closeUnserved(t, again)

	// --bootstrap-admin-principal: no key; the principal is the admin.
	cfg, _, _ := newConfig(t)
	cfg.BootstrapAdminPrincipal = "spiffe://test/root"
	if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "--bootstrap-admin-principal needs --client-ca") {
		t.Fatalf("a first admin principal with no client certificates to prove it: %v", err)
	}
	withTLS(t, &cfg)
	srv2, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if srv2.BootstrapAdminKey() != "" {
		t.Fatal("an admin key was made although a bootstrap principal was given")
	}
	closeUnserved(t, srv2)
}

// Plaintext is served on loopback only; TLS may listen anywhere.
func TestPlaintextOnlyOnLoopback(t *testing.T) {
	t.Parallel()
	cfg, _, _ := newConfig(t)
	cfg.ListenAddr = "0.0.0.0:0"
	if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "requires TLS") {
		t.Fatalf("plaintext on 0.0.0.0: %v", err)
	}
	withTLS(t, &cfg)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("TLS on 0.0.0.0: %v", err)
	}
	if ip := srv.Addr().(*net.TCPAddr).IP; !ip.IsUnspecified() {
		t.Fatalf("listening on %v", ip)
	}
	closeUnserved(t, srv)
}

// closeUnserved shuts down a server that New made but nobody served.
func closeUnserved(t *testing.T, srv *server.Server) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := srv.Serve(ctx); err != nil {
		t.Fatal(err)
	}
}

// A refused call cannot make the broker store an arbitrarily long name.
func TestAuditBoundsRefusedNames(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	long := "accounts/" + strings.Repeat("a", 100_000)
	_, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: long})
	wantCode(t, err, codes.InvalidArgument, "name")
	events := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: svcPrincipal})
	if len(events) != 1 {
		t.Fatalf("%d audit events for one refused call", len(events))
	}
	if len(events[0].GetResource()) > 300 || events[0].GetCode() != "INVALID_ARGUMENT" {
		t.Fatalf("audit event of a call with a 100 kB name: resource of %d bytes, code %s", len(events[0].GetResource()), events[0].GetCode())
	}
}

// A time bound the audit trail cannot compare (it orders events by their
// nanoseconds since 1970 in an int64) is refused, naming the field, rather
// than silently ignored (year 1 is the zero time) or misread (before 1970
// or after 2262 the nanoseconds wrap).
func TestAuditTimeBoundsOutOfRange(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	for _, bound := range []time.Time{
		{}, // 0001-01-01
		time.Date(1677, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(1969, 12, 31, 23, 59, 59, 0, time.UTC),
		time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC),
	} {
		for _, field := range []string{"start_time", "end_time"} {
			req := &credbrokerv1.ListAuditEventsRequest{}
			if field == "start_time" {
				req.StartTime = timestamppb.New(bound)
			} else {
				req.EndTime = timestamppb.New(bound)
			}
			_, err := b.audit.ListAuditEvents(ctx, req)
			t.Run(field+"="+bound.Format(time.RFC3339), func(t *testing.T) { wantCode(t, err, codes.InvalidArgument, field) })
		}
	}

	// The ends of the range are bounds like any other.
	resp, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{
		StartTime: timestamppb.New(time.Unix(0, 0)), EndTime: timestamppb.New(time.Unix(0, math.MaxInt64)),
	})
	if err != nil || len(resp.GetEvents()) == 0 {
		t.Fatalf("ListAuditEvents over the whole range: %d events, %v", len(resp.GetEvents()), err)
	}
	resp, err = b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{EndTime: timestamppb.New(time.Unix(0, 0))})
	if err != nil || len(resp.GetEvents()) != 0 {
		t.Fatalf("ListAuditEvents before 1970: %d events, %v", len(resp.GetEvents()), err)
	}
}

// Each admin call leaves exactly one event: stored with its change when it
// changed something, written by the gate when it did not (a validate-only
// link, a grant that was there already, a second revocation) or failed.
func TestEachAdminCallLeavesOneEvent(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	start := time.Now()
	req := jumpCloudRequest("acme")
	req.ValidateOnly = true
	if _, err := b.accounts.CreateAccount(ctx, req); err != nil {
		t.Fatal(err)
	}
	b.link(t, "acme")
	b.grant(t, "acme", svcPrincipal) // there already: changes nothing
	b.createKey(t, "k1", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	for range 2 {
		if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/k1"}); err != nil {
			t.Fatal(err)
		}
	}
	_, err := b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/ghost"})
	wantCode(t, err, codes.NotFound, "")

	all := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{StartTime: timestamppb.New(start)})
	var got []string
	for i := len(all) - 1; i >= 0; i-- {
		got = append(got, strings.TrimPrefix(all[i].GetMethod(), "/credbroker.v1.")+" "+all[i].GetCode())
	}
	want := []string{
		"AccountService/CreateAccount OK", // validate-only
		"AccountService/CreateAccount OK",
		"AccountService/AddAccountGrant OK",
		"AccountService/AddAccountGrant OK", // unchanged
		"CallerService/CreateCallerKey OK",
		"CallerService/RevokeCallerKey OK",
		"CallerService/RevokeCallerKey OK", // revoked already
		"AccountService/DeleteAccount NOT_FOUND",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
