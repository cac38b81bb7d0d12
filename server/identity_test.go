package server_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/devpki"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// access is what one connection may do: GetToken on accounts acme and
// beta, and an admin call.
func access(conn *grpc.ClientConn) [3]codes.Code {
	ctx := context.Background()
	tokens := credbrokerv1.NewTokenServiceClient(conn)
	_, acme := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	_, beta := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/beta"})
	_, admin := credbrokerv1.NewCallerServiceClient(conn).ListAdminPrincipals(ctx, &credbrokerv1.ListAdminPrincipalsRequest{})
	return [3]codes.Code{status.Code(acme), status.Code(beta), status.Code(admin)}
}

// A certificate's principal says where it came from: a SPIFFE ID spelled
// in a CN or a DNS SAN proves nothing granted to the SPIFFE ID (nor its
// admin role), and a DNS SAN and a CN with the same text are different
// principals.
func TestCertificatePrincipalsAreTyped(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	b.link(t, "acme")
	b.grant(t, "acme", "spiffe://example.org/billing")
	b.grant(t, "acme", "dns:billing.internal")
	if _, err := b.accounts.CreateAccount(ctx, jumpCloudRequest("beta")); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "beta", "cn:billing.internal")
	if _, err := b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: "spiffe://example.org/admin"}); err != nil {
		t.Fatal(err)
	}

	const OK, Deny = codes.OK, codes.PermissionDenied
	for _, tc := range []struct {
		name      string
		id        devpki.Identity
		principal string
		want      [3]codes.Code // acme, beta, admin
	}{
		{"SPIFFE ID in a URI SAN", devpki.Identity{URIs: []string{"spiffe://example.org/billing"}}, "spiffe://example.org/billing", [3]codes.Code{OK, Deny, Deny}},
		{"SPIFFE ID spelled in the CN", devpki.Identity{CommonName: "spiffe://example.org/billing"}, "cn:spiffe://example.org/billing", [3]codes.Code{Deny, Deny, Deny}},
		{"SPIFFE ID spelled in a DNS SAN", devpki.Identity{DNSNames: []string{"spiffe://example.org/billing"}}, "dns:spiffe://example.org/billing", [3]codes.Code{Deny, Deny, Deny}},
		{"admin SPIFFE ID in a URI SAN", devpki.Identity{URIs: []string{"spiffe://example.org/admin"}}, "spiffe://example.org/admin", [3]codes.Code{Deny, Deny, OK}},
		{"admin SPIFFE ID spelled in the CN", devpki.Identity{CommonName: "spiffe://example.org/admin"}, "cn:spiffe://example.org/admin", [3]codes.Code{Deny, Deny, Deny}},
		{"DNS SAN", devpki.Identity{DNSNames: []string{"billing.internal"}, CommonName: "ignored"}, "dns:billing.internal", [3]codes.Code{OK, Deny, Deny}},
		{"CN", devpki.Identity{CommonName: "billing.internal"}, "cn:billing.internal", [3]codes.Code{Deny, OK, Deny}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := access(b.dial(t, "", clientCert(t, ca, tc.id))); got != tc.want {
				t.Fatalf("GetToken acme, GetToken beta, ListAdminPrincipals = %v, want %v", got, tc.want)
			}
			if events := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: tc.principal}); len(events) != 3 {
				t.Fatalf("%d audit events name %q, want 3", len(events), tc.principal)
			}
		})
	}
}

// No certificate and no request can make the broker's own name (or the
// local operator's, used by rekey) the principal of a call.
func TestNoCallerIsTheBroker(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	b.link(t, "acme")
	b.grant(t, "acme", "dns:billing.internal")

	for _, tc := range []struct {
		name string
		id   devpki.Identity
		code codes.Code
		msg  string
	}{
		{"CN", devpki.Identity{CommonName: "credbroker"}, codes.PermissionDenied, "cn:credbroker has no grant"},
		{"DNS SAN", devpki.Identity{DNSNames: []string{"credbroker"}}, codes.PermissionDenied, "dns:credbroker has no grant"},
		{"relative URI SAN", devpki.Identity{URIs: []string{"credbroker"}}, codes.Unauthenticated, "not a principal"},
		{"rekey's principal as URI SAN", devpki.Identity{URIs: []string{"unix-uid:0"}}, codes.Unauthenticated, "not a principal"},
		{"DNS principal as URI SAN", devpki.Identity{URIs: []string{"dns:billing.internal"}}, codes.Unauthenticated, "not a principal"},
		{"CN principal as URI SAN", devpki.Identity{URIs: []string{"CN:credbroker"}}, codes.Unauthenticated, "not a principal"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := credbrokerv1.NewTokenServiceClient(b.dial(t, "", clientCert(t, ca, tc.id))).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if st := status.Convert(err); st.Code() != tc.code || !strings.Contains(st.Message(), tc.msg) {
				t.Fatalf("GetToken = %v %q, want %v containing %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}
	for _, p := range []string{"credbroker", "unix-uid:0"} {
		_, err := b.accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: p})
		wantCode(t, err, codes.InvalidArgument, "principal")
		_, err = b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: p})
		wantCode(t, err, codes.InvalidArgument, "principal")
	}

	// The broker's own events are its start-up and state changes, never calls.
	own := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: "credbroker"})
	if len(own) == 0 {
		t.Fatal("no event of the broker's own: the check below would prove nothing")
	}
	for _, ev := range own {
		if strings.HasPrefix(ev.GetMethod(), "/") || ev.GetMethod() == "proxy" {
			t.Fatalf("a call was audited as the broker's own: %v", ev)
		}
	}
	if evs := b.listAll(t, &credbrokerv1.ListAuditEventsRequest{Principal: "unix-uid:0"}); len(evs) != 0 {
		t.Fatalf("calls audited as unix-uid:0: %v", evs)
	}

	// --bootstrap-admin-principal: refused before anything is created.
	cfg2, _, _ := newConfig(t)
	cfg2.DataDir = filepath.Join(t.TempDir(), "data")
	cfg2.BootstrapAdminPrincipal = "credbroker"
	if _, err := server.New(cfg2); err == nil || !strings.Contains(err.Error(), "bootstrap-admin-principal") {
		t.Fatalf("New with bootstrap principal credbroker: %v", err)
	}
	if _, err := os.Stat(cfg2.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the data directory was created: %v", err)
	}
}

// Principals must be typed; an untyped one is refused with a message that
// shows the typed forms, for grants, admin principals and the bootstrap
// admin principal.
func TestUntypedPrincipalsRefused(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()
	b.link(t, "acme")
	for _, p := range []string{
		"spiffe://example.org/billing", "urn:example:billing", "dns:billing.internal", "dns:_svc.Billing-1.internal",
		"cn:billing.internal", "cn:Billing Service", "callerKeys/svc",
	} {
		if _, err := b.accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: p}); err != nil {
			t.Errorf("AddAccountGrant(%q): %v", p, err)
		}
	}
	for _, p := range []string{
		"billing.internal", "billing", "", "DNS:billing.internal", "Cn:billing", "dns:", "dns:billing internal", "dns:a..b",
		"cn:", "cn:evil\u202etxt", "spiffe:", "spiffe://example.org/a b", "unix-uid:1000",
	} {
		_, err := b.accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: p})
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("AddAccountGrant(%q) = %v, want INVALID_ARGUMENT", p, err)
		}
	}
	const hint = `use "dns:billing.internal" for a DNS SAN or "cn:billing.internal" for a subject CN`
	_, err := b.accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: "billing.internal"})
	if st := wantCode(t, err, codes.InvalidArgument, "principal"); !strings.Contains(st.Message(), hint) {
		t.Fatalf("message %q does not show the typed forms", st.Message())
	}
	_, err = b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: "billing.internal"})
	if st := wantCode(t, err, codes.InvalidArgument, "principal"); !strings.Contains(st.Message(), hint) {
		t.Fatalf("message %q does not show the typed forms", st.Message())
	}
	_, err = b.callers.RemoveAdminPrincipal(ctx, &credbrokerv1.RemoveAdminPrincipalRequest{Principal: "billing.internal"})
	wantCode(t, err, codes.InvalidArgument, "principal")
	if a := b.account(t, "acme"); len(a.GetGrants()) != 7 {
		t.Fatalf("grants = %v", a.GetGrants())
	}

	cfg, _, _ := newConfig(t)
	cfg.DataDir = filepath.Join(t.TempDir(), "data")
	cfg.BootstrapAdminPrincipal = "billing.internal"
	if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), hint) {
		t.Fatalf("New with an untyped bootstrap principal: %v", err)
	}
	if _, err := os.Stat(cfg.DataDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the data directory was created: %v", err)
	}
}

// writeOldDatabase writes, with the store package, a database as builds
// before typed principals left it: account acme with untyped grants, and
// an untyped admin principal.
func writeOldDatabase(t *testing.T, cfg server.Config, grants []string, admin string) {
	t.Helper()
	master, err := keyring.ParseMasterKey(cfg.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(cfg.DataDir, "credbroker.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	key, wrapped, err := master.NewDataKey("acme")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := key.Seal(keyring.FieldClientSecret, []byte(clientSecret))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	a := store.Account{
		ID: "acme", Provider: string(provider.KindJumpCloudServiceAccount), ClientID: clientID, Region: provider.RegionUS, OrgID: orgID,
		WrappedKey: wrapped, Secrets: []store.Secret{{ID: accounts.SecretID(secret.New(clientSecret)), Sealed: sealed, CreateTime: now}},
		CreateTime: now, UpdateTime: now,
	}
	for _, p := range grants {
		a.Grants = append(a.Grants, store.Grant{Principal: p, CreateTime: now, Creator: admin})
	}
	ev := store.AuditEvent{Time: now, Principal: "credbroker", Method: "bootstrap", Code: "OK"}
	if err := st.Bootstrap(nil, &store.AdminPrincipal{Principal: admin, CreateTime: now, Creator: "credbroker"}, ev); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateAccount(a, store.TokenState{State: "active"}, store.AuditEvent{Time: now, Principal: admin, Method: "/credbroker.v1.AccountService/CreateAccount", Code: "OK"}); err != nil {
		t.Fatal(err)
	}
}

// Grants and admin principals stored untyped by earlier builds are typed on
// the first start, once, in one audited step, with exactly their old
// meaning: the certificates that worked before still work, and nothing new
// does.
func TestUntypedPrincipalsOfOldDatabasesAreTyped(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	// "cn:billing" was, to an earlier build, just text that a CN or DNS SAN
	// "cn:billing" proved; it must not come to mean the CN "billing".
	writeOldDatabase(t, cfg, []string{"billing.internal", "spiffe://example.org/billing", "billing@example.org", "cn:billing"}, "admin.internal")
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	adminConn := b.dial(t, "", clientCert(t, ca, devpki.Identity{DNSNames: []string{"admin.internal"}}))
	admins := credbrokerv1.NewCallerServiceClient(adminConn)
	audit := credbrokerv1.NewAuditServiceClient(adminConn)
	accountsClient := credbrokerv1.NewAccountServiceClient(adminConn)

	const OK, Deny = codes.OK, codes.PermissionDenied
	for _, tc := range []struct {
		name string
		id   devpki.Identity
		want codes.Code
	}{
		{"DNS SAN as before", devpki.Identity{DNSNames: []string{"billing.internal"}}, OK},
		{"CN as before", devpki.Identity{CommonName: "billing.internal"}, OK},
		{"URI SAN as before", devpki.Identity{URIs: []string{"spiffe://example.org/billing"}}, OK},
		{"CN that is no DNS name, as before", devpki.Identity{CommonName: "billing@example.org"}, OK},
		{"DNS SAN that is no DNS name: not carried over", devpki.Identity{DNSNames: []string{"billing@example.org"}}, Deny},
		{"CN spelled like the old text, as before", devpki.Identity{CommonName: "cn:billing"}, OK},
		{"CN without the old text's prefix", devpki.Identity{CommonName: "billing"}, Deny},
		{"CN spelled like the SPIFFE ID", devpki.Identity{CommonName: "spiffe://example.org/billing"}, Deny},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := credbrokerv1.NewTokenServiceClient(b.dial(t, "", clientCert(t, ca, tc.id))).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if status.Code(err) != tc.want {
				t.Fatalf("GetToken = %v, want %v", err, tc.want)
			}
		})
	}
	for _, id := range []devpki.Identity{{DNSNames: []string{"admin.internal"}}, {CommonName: "admin.internal"}} {
		if got := access(b.dial(t, "", clientCert(t, ca, id))); got[2] != OK {
			t.Fatalf("admin certificate %v: ListAdminPrincipals = %v", id, got[2])
		}
	}

	wantGrants := []string{"cn:billing.internal", "cn:billing@example.org", "cn:cn:billing", "dns:billing.internal", "spiffe://example.org/billing"}
	wantAdmins := []string{"cn:admin.internal", "dns:admin.internal"}
	check := func(when string, admins credbrokerv1.CallerServiceClient, accounts credbrokerv1.AccountServiceClient, audit credbrokerv1.AuditServiceClient) {
		t.Helper()
		a, err := accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
		if err != nil {
			t.Fatal(err)
		}
		var grants []string
		for _, g := range a.GetAccount().GetGrants() {
			grants = append(grants, g.GetPrincipal())
		}
		if !slices.Equal(grants, wantGrants) {
			t.Fatalf("%s: grants = %q, want %q", when, grants, wantGrants)
		}
		list, err := admins.ListAdminPrincipals(ctx, &credbrokerv1.ListAdminPrincipalsRequest{})
		if err != nil || !slices.Equal(list.GetPrincipals(), wantAdmins) {
			t.Fatalf("%s: admin principals = %q, %v; want %q", when, list.GetPrincipals(), err, wantAdmins)
		}
		events, err := audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Principal: "credbroker", PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range events.GetEvents() {
			if ev.GetMethod() == "type_principals" {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("%s: %d audit events of the migration, want 1", when, n)
		}
	}
	check("first start", admins, accountsClient, audit)

	b = b.restart(t) // nothing left to migrate
	conn := b.dial(t, "", clientCert(t, ca, devpki.Identity{CommonName: "admin.internal"}))
	check("second start", credbrokerv1.NewCallerServiceClient(conn), credbrokerv1.NewAccountServiceClient(conn), credbrokerv1.NewAuditServiceClient(conn))
}
