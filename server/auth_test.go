package server_test

import (
	"context"
	"crypto/tls"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/devpki"
)

// createKey makes a caller key with the broker's admin key.
func (b *broker) createKey(t *testing.T, id string, role credbrokerv1.Role, expire time.Time) string {
	t.Helper()
	ck := &credbrokerv1.CallerKey{Role: role}
	if !expire.IsZero() {
		ck.ExpireTime = timestamppb.New(expire)
	}
	resp, err := b.callers.CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{KeyId: id, CallerKey: ck})
	if err != nil {
		t.Fatalf("CreateCallerKey(%s): %v", id, err)
	}
	if !strings.HasPrefix(resp.GetKey(), "cbk_") || len(resp.GetKey()) != len("cbk_")+43 {
		t.Fatalf("key of %s does not look like cbk_ + 256 bits in base64url", id)
	}
	return resp.GetKey()
}

// The access matrix: every kind of principal against accounts it may and
// may not use, and methods of every role, with the codes they must get.
func TestAccessMatrix(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme") // grants callerKeys/svc
	b.grant(t, "acme", "spiffe://test/billing")
	if _, err := b.accounts.CreateAccount(context.Background(), jumpCloudRequest("beta")); err != nil {
		t.Fatal(err)
	}
	revoked := b.createKey(t, "gone", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	b.grant(t, "beta", "callerKeys/gone")
	if _, err := b.callers.RevokeCallerKey(context.Background(), &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/gone"}); err != nil {
		t.Fatal(err)
	}

	type principal struct {
		name string
		conn *grpc.ClientConn
	}
	principals := []principal{
		{"admin key", b.dial(t, b.keys.admin, nil)},
		{"ops admin key", b.dial(t, b.createKey(t, "ops", credbrokerv1.Role_ROLE_ADMIN, time.Time{}), nil)},
		{"svc key", b.dial(t, b.keys.svc, nil)},
		{"other key", b.dial(t, b.createKey(t, "other", credbrokerv1.Role_ROLE_CALLER, time.Time{}), nil)},
		{"revoked key", b.dial(t, revoked, nil)},
		{"billing cert", b.dial(t, "", clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/billing"}}))},
		{"anonymous", b.dial(t, "", nil)},
	}
	const (
		OK    = codes.OK
		Deny  = codes.PermissionDenied
		Anon  = codes.Unauthenticated
		NoAcc = codes.NotFound
	)
	type call struct {
		name string
		do   func(context.Context, *grpc.ClientConn) error
	}
	getToken := func(id string) call {
		return call{"GetToken " + id, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := credbrokerv1.NewTokenServiceClient(c).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
			return err
		}}
	}
	getAccount := func(id string) call {
		return call{"GetAccount " + id, func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := credbrokerv1.NewAccountServiceClient(c).GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/" + id})
			return err
		}}
	}
	calls := []call{
		getToken("acme"), getToken("beta"), getToken("ghost"),
		getAccount("acme"), getAccount("ghost"),
		{"ListCallerKeys", func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := credbrokerv1.NewCallerServiceClient(c).ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{})
			return err
		}},
		{"ListAuditEvents", func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := credbrokerv1.NewAuditServiceClient(c).ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{})
			return err
		}},
		{"Health", func(ctx context.Context, c *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(c).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
	}
	//                               acme  beta  ghost GetA  GetA-ghost keys  audit health
	want := map[string][]codes.Code{
		"admin key":     {Deny, Deny, Deny, OK, NoAcc, OK, OK, OK},
		"ops admin key": {Deny, Deny, Deny, OK, NoAcc, OK, OK, OK},
		"svc key":       {OK, Deny, Deny, Deny, Deny, Deny, Deny, OK},
		"other key":     {Deny, Deny, Deny, Deny, Deny, Deny, Deny, OK},
		"revoked key":   {Anon, Anon, Anon, Anon, Anon, Anon, Anon, OK},
		"billing cert":  {OK, Deny, Deny, Deny, Deny, Deny, Deny, OK},
		"anonymous":     {Anon, Anon, Anon, Anon, Anon, Anon, Anon, OK},
	}
	for _, p := range principals {
		for i, c := range calls {
			err := c.do(context.Background(), p.conn)
			if got := status.Code(err); got != want[p.name][i] {
				t.Errorf("%s: %s = %v (%v), want %v", p.name, c.name, got, err, want[p.name][i])
			}
		}
	}
	// A denied GetToken reads the same whether or not the account exists.
	svc := credbrokerv1.NewTokenServiceClient(principals[2].conn)
	_, errBeta := svc.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/beta"})
	_, errGhost := svc.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/ghost"})
	if strings.ReplaceAll(status.Convert(errBeta).Message(), "beta", "X") != strings.ReplaceAll(status.Convert(errGhost).Message(), "ghost", "X") {
		t.Errorf("denials differ for an existing and a missing account: %q vs %q", status.Convert(errBeta).Message(), status.Convert(errGhost).Message())
	}
}

// Client certificates: the right CA is accepted and names the principal
// (URI SAN as it is, else "dns:" and the DNS SAN, else "cn:" and the CN);
// another CA, an expired certificate and none at all are refused with
// UNAUTHENTICATED saying why.
func TestClientCertificates(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	for _, p := range []string{"spiffe://test/a", "dns:dns.test", "cn:cn-only"} {
		b.grant(t, "acme", p)
	}
	other, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		code codes.Code
		msg  string
	}{
		{"URI SAN", clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/a"}, DNSNames: []string{"dns.test"}, CommonName: "cn-only"}), codes.OK, ""},
		{"DNS SAN", clientCert(t, ca, devpki.Identity{DNSNames: []string{"dns.test"}, CommonName: "cn-only"}), codes.OK, ""},
		{"CN", clientCert(t, ca, devpki.Identity{CommonName: "cn-only"}), codes.OK, ""},
		{"ungranted", clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/b"}}), codes.PermissionDenied, "has no grant"},
		{"another CA", clientCert(t, other, devpki.Identity{URIs: []string{"spiffe://test/a"}}), codes.Unauthenticated, "not signed by the broker's client CA"},
		{"expired", clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/a"}, NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}), codes.Unauthenticated, "expired"},
		{"no name", clientCert(t, ca, devpki.Identity{}), codes.Unauthenticated, "names no principal"},
		{"key-like principal", clientCert(t, ca, devpki.Identity{CommonName: "callerKeys/svc"}), codes.PermissionDenied, "cn:callerKeys/svc has no grant"},
		{"none", nil, codes.Unauthenticated, "no credentials"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := credbrokerv1.NewTokenServiceClient(b.dial(t, "", tc.cert)).GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			st := status.Convert(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("GetToken = %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
	// The audit trail names the certificate's principal.
	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Principal: "dns:dns.test"})
	if err != nil || len(events.GetEvents()) != 1 || events.GetEvents()[0].GetCode() != "OK" {
		t.Fatalf("audit events of dns:dns.test = %v, %v", events, err)
	}
}

// A caller key revoked while a service is using it stops working on the
// very next call; an expired key stops working too.
func TestCallerKeyRevokedWhileInUse(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	server.ShortenAuditIntervals(&cfg, 10*time.Millisecond, 0)
	// The workers go on for a moment after the revocation with a key now
	// refused: the budget of such calls per address is not under test.
	cfg.Gate.UnauthenticatedRateLimit = -1
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	key := b.createKey(t, "worker", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	b.grant(t, "acme", "callerKeys/worker")
	tokens := credbrokerv1.NewTokenServiceClient(b.dial(t, key, nil))
	get := func() error {
		_, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return err
	}

	var revoked atomic.Bool
	var ok, okAfter atomic.Int64
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				after := revoked.Load() // read before the call starts
				if err := get(); err == nil {
					ok.Add(1)
					if after {
						okAfter.Add(1)
					}
				} else if status.Code(err) != codes.Unauthenticated {
					t.Errorf("GetToken during revocation: %v", err)
				}
			}
		}()
	}
	waitUntil(t, func() bool { return ok.Load() >= 20 })
	if _, err := b.callers.RevokeCallerKey(context.Background(), &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/worker"}); err != nil {
		t.Fatal(err)
	}
	revoked.Store(true)
	err := get()
	close(stop)
	wg.Wait()
	if st := status.Convert(err); st.Code() != codes.Unauthenticated || !strings.Contains(st.Message(), "revoked") {
		t.Fatalf("first call after revocation: %v", st.Message())
	}
	if okAfter.Load() != 0 {
		t.Fatalf("%d calls that started after the revocation succeeded", okAfter.Load())
	}
	// The audit trail's tally of refused calls names the revoked key.
	eventually(t, "an aggregated event naming the revoked key", func() bool {
		refused, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range refused.GetEvents() {
			if ev.GetMethod() == "unauthenticated_calls" && ev.GetCode() == "UNAUTHENTICATED" && strings.Contains(ev.GetDetail(), "callerKeys/worker") {
				return true
			}
		}
		return false
	})

	// An expiring key works until its expire_time, then is refused.
	short := b.createKey(t, "short", credbrokerv1.Role_ROLE_CALLER, time.Now().Add(2*time.Second))
	b.grant(t, "acme", "callerKeys/short")
	shortTokens := credbrokerv1.NewTokenServiceClient(b.dial(t, short, nil))
	if _, err := shortTokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	waitUntil(t, func() bool {
		_, err := shortTokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return status.Code(err) == codes.Unauthenticated && strings.Contains(err.Error(), "expired")
	})
	list, err := b.callers.ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]credbrokerv1.CallerKeyState{}
	for _, k := range list.GetCallerKeys() {
		states[k.GetName()] = k.GetState()
	}
	if states["callerKeys/worker"] != credbrokerv1.CallerKeyState_CALLER_KEY_STATE_REVOKED || states["callerKeys/short"] != credbrokerv1.CallerKeyState_CALLER_KEY_STATE_EXPIRED ||
		states["callerKeys/svc"] != credbrokerv1.CallerKeyState_CALLER_KEY_STATE_ACTIVE {
		t.Fatalf("key states = %v", states)
	}
}

// If the audit event cannot be written, the call fails and hands nothing out.
func TestAuditWriteFailureFailsTheCall(t *testing.T) {
	t.Parallel()
	b, fail := startFailingAudit(t)
	b.link(t, "acme")
	b.token(t, "acme")

	fail.Store(true)
	resp, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE")
	if resp.GetAccessToken() != "" {
		t.Fatal("a token was handed out without an audit event")
	}
	_, err = b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/nope"})
	wantCode(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE") // denials are audited too
	_, err = b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE")
	if !strings.Contains(b.logs.String(), "disk full") {
		t.Error("the audit failure is not in the server log")
	}

	fail.Store(false)
	b.token(t, "acme")
}

// The per-caller rate limit answers RESOURCE_EXHAUSTED with a retry hint,
// and one caller's limit does not touch another's.
func TestRateLimitPerCaller(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Gate.RateLimit, cfg.Gate.RateBurst = 0.001, 4 // four calls, then one per 1000 s
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme") // the admin key has now made three calls, with CreateCallerKey
	for range 4 {
		b.token(t, "acme")
	}
	_, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	st := wantCode(t, err, codes.ResourceExhausted, "RATE_LIMITED")
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("no RetryInfo in %v", st.Details())
	}
	// The admin key still has a call left.
	if _, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/acme"}); err != nil {
		t.Fatalf("another caller was limited: %v", err)
	}
}

// Revoking a revoked key says so. Deleting a key refuses it from its next
// call and frees its name, but only once no account grants its principal
// (a new key of the name would get the grant); deleting the last admin key
// is refused; the audit trail keeps the deletion. A key of a freed name
// is a new key: the old one stays refused.
func TestDeleteCallerKey(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	b.link(t, "acme")
	old := b.createKey(t, "worker", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	b.grant(t, "acme", "callerKeys/worker")
	tokens := credbrokerv1.NewTokenServiceClient(b.dial(t, old, nil))
	if _, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{false, true} {
		resp, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/worker"})
		if err != nil || resp.GetAlreadyRevoked() != want {
			t.Fatalf("revocation %d: already_revoked %v, %v; want %v", i+1, resp.GetAlreadyRevoked(), err, want)
		}
	}

	_, err := b.callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: "callerKeys/worker"})
	if st := wantCode(t, err, codes.FailedPrecondition, "KEY_STILL_GRANTED"); !strings.Contains(st.Message(), "(accounts acme)") {
		t.Fatalf("a granted key's deletion: %s", st.Message())
	}
	if _, err := b.accounts.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/worker"}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: "callerKeys/worker"}); err != nil {
		t.Fatal(err)
	}
	_, err = b.callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: "callerKeys/worker"})
	wantCode(t, err, codes.NotFound, "")
	list, err := b.callers.ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{})
	if err != nil || slices.ContainsFunc(list.GetCallerKeys(), func(k *credbrokerv1.CallerKey) bool { return k.GetName() == "callerKeys/worker" }) {
		t.Fatalf("the keys after the deletion: %v, %v", list, err)
	}
	_, err = b.accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/worker"})
	wantCode(t, err, codes.NotFound, "")

	renewed := b.createKey(t, "worker", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	b.grant(t, "acme", "callerKeys/worker")
	if _, err := credbrokerv1.NewTokenServiceClient(b.dial(t, renewed, nil)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err != nil {
		t.Fatalf("the new key of the freed name: %v", err)
	}
	_, err = tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unauthenticated, "")

	_, err = b.callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: "callerKeys/bootstrap-admin"})
	wantCode(t, err, codes.FailedPrecondition, "LAST_ADMIN")
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	deletions := 0
	for _, e := range events.GetEvents() {
		if strings.HasSuffix(e.GetMethod(), "/DeleteCallerKey") && e.GetCode() == "OK" && e.GetResource() == "callerKeys/worker" {
			deletions++
		}
	}
	if deletions != 1 {
		t.Fatalf("%d audited deletions of callerKeys/worker, want 1", deletions)
	}
}
