package gate_test

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/store"
)

// newGate is a gate on a real store with the caller keys "svc" (a caller)
// and "ops" (an admin), whose secrets it returns, and its audit trail.
func newGate(t *testing.T) (g *gate.Gate, svc, ops string, al *audit.Log) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	master, _ := keyring.ParseMasterKey("q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=")
	if _, err := st.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	mac, _, err := master.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	var cs *callers.Service
	cs = callers.New(st, mac, time.Now, func(context.Context) { _, _ = cs.Load() })
	keys := map[string]string{}
	for id, role := range map[string]callers.Role{"svc": callers.RoleCaller, "ops": callers.RoleAdmin} {
		_, key, err := cs.Create(context.Background(), callers.NewKey{ID: id, Role: role}, audit.Own(time.Now(), "test", "", ""))
		if err != nil {
			t.Fatal(err)
		}
		keys[id] = key.Reveal()
	}
	al = audit.New(audit.Config{}, st, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { al.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	g = gate.New(gate.Config{Logger: slog.New(slog.DiscardHandler)}, cs, al, mtls.NewHTTPVerifier(nil))
	return g, keys["svc"], keys["ops"], al
}

// events are the audit events of principal, newest first.
func events(t *testing.T, al *audit.Log, principal string) []store.AuditEvent {
	t.Helper()
	evs, _, err := al.List(audit.Query{Principal: principal, Limit: 100})
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

// The same gate admits HTTP requests (Authorize) and gRPC calls (the
// interceptor): the same caller keys, the same access levels, the same
// audit events.
func TestOneGateForHTTPAndGRPC(t *testing.T) {
	g, svc, ops, al := newGate(t)

	for _, c := range []struct {
		name   string
		key    string
		access gate.Access
		want   codes.Code
	}{
		{"caller", "Bearer " + svc, gate.Caller, codes.OK},
		{"caller at an admin method", "Bearer " + svc, gate.Admin, codes.PermissionDenied},
		{"admin", "Bearer " + ops, gate.Admin, codes.OK},
		{"unknown key", "Bearer cbk_nothing", gate.Caller, codes.Unauthenticated},
		{"no scheme", svc, gate.Caller, codes.Unauthenticated},
	} {
		r := httptest.NewRequest("GET", "/v1/accounts/acme/proxy/x", nil)
		r.Header.Set("Proxy-Authorization", c.key)
		call, err := g.Authorize(r, "http_test", c.access, "Proxy-Authorization", "accounts/acme")
		if status.Code(err) != c.want {
			t.Errorf("HTTP, %s: %v, want %v", c.name, err, c.want)
		}
		if err := g.Finish(call, err); status.Code(err) != c.want {
			t.Errorf("HTTP, %s: Finish says %v", c.name, err)
		}
	}
	if evs := events(t, al, "callerKeys/svc"); len(evs) != 2 || evs[0].Code != "PERMISSION_DENIED" || evs[1].Code != "OK" ||
		evs[1].Method != "http_test" || evs[1].Resource != "accounts/acme" {
		t.Errorf("the audit events of svc's HTTP calls: %+v", evs)
	}

	// gRPC: TokenService needs a caller, AccountService an admin.
	call := func(method, key string) (string, error) {
		ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+key))
		var principal string
		_, err := g.UnaryInterceptor(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}, &grpc.UnaryServerInfo{FullMethod: method},
			func(ctx context.Context, _ any) (any, error) {
				principal = gate.CallFrom(ctx).Principal
				return nil, nil
			})
		return principal, err
	}
	if p, err := call(credbrokerv1.TokenService_GetToken_FullMethodName, svc); err != nil || p != "callerKeys/svc" {
		t.Errorf("GetToken as svc: %q, %v", p, err)
	}
	if _, err := call(credbrokerv1.AccountService_DeleteAccount_FullMethodName, svc); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DeleteAccount as svc: %v", err)
	}
	if _, err := call("/credbroker.v1.NoSuchService/Method", ops); status.Code(err) != codes.PermissionDenied {
		t.Errorf("an unlisted method as an admin: %v", err)
	}
	if evs := events(t, al, "callerKeys/svc"); len(evs) != 4 || evs[1].Method != credbrokerv1.TokenService_GetToken_FullMethodName || evs[1].Code != "OK" {
		t.Errorf("the audit events of svc after its gRPC calls: %+v", evs)
	}
}
