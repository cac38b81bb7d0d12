package server_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// limitedGrant grants principal access to the account within limits and
// returns the account as the answer shows it.
func (b *broker) limitedGrant(t *testing.T, id, principal string, methods, prefixes []string) *credbrokerv1.Account {
	t.Helper()
	resp, err := b.accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{
		Name: "accounts/" + id, Principal: principal, HttpMethods: methods, PathPrefixes: prefixes,
	})
	if err != nil {
		t.Fatalf("AddAccountGrant(%s, %s, %v, %v): %v", id, principal, methods, prefixes, err)
	}
	return resp.GetAccount()
}

// grantOf is principal's grant in a, or nil.
func grantOf(a *credbrokerv1.Account, principal string) *credbrokerv1.Grant {
	for _, g := range a.GetGrants() {
		if g.GetPrincipal() == principal {
			return g
		}
	}
	return nil
}

// A grant limited to read-only calls on one path prefix lets only those
// through the egress proxy, and refuses everything else (and any token)
// before the API or the token endpoint hears of it.
func TestLimitedGrants(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	b.link(t, "sa")
	roKey := b.createKey(t, "ro", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	const ro = "callerKeys/ro"

	a := b.limitedGrant(t, "sa", ro, []string{"GET"}, []string{"/v2/systemgroups"})
	g := grantOf(a, ro)
	if !slices.Equal(g.GetHttpMethods(), []string{"GET"}) || !slices.Equal(g.GetPathPrefixes(), []string{"/v2/systemgroups"}) {
		t.Fatalf("AddAccountGrant shows the grant as %v", g)
	}
	if g := grantOf(b.account(t, "sa"), ro); !slices.Equal(g.GetHttpMethods(), []string{"GET"}) || !slices.Equal(g.GetPathPrefixes(), []string{"/v2/systemgroups"}) {
		t.Fatalf("GetAccount shows the grant as %v", g)
	}
	if g := grantOf(b.account(t, "sa"), svcPrincipal); len(g.GetHttpMethods())+len(g.GetPathPrefixes()) != 0 {
		t.Fatalf("an unlimited grant shows limits: %v", g)
	}

	allowed := func(t *testing.T, method, path, wantUpstream string) {
		t.Helper()
		before := b.fake.APIRequests()
		resp, body := b.proxyCall(t, method, "/v1/accounts/sa/proxy"+path, roKey, nil, nil)
		if resp.StatusCode != http.StatusOK || b.fake.APIRequests() != before+1 || b.fake.LastAPIRequest().Path != wantUpstream {
			t.Fatalf("%s %s: HTTP %d %s; the API got %d requests, the last for %s", method, path, resp.StatusCode, body,
				b.fake.APIRequests()-before, b.fake.LastAPIRequest().Path)
		}
	}
	refusedWith := func(t *testing.T, method, path string, header http.Header) {
		t.Helper()
		apiBefore, tokensBefore := b.fake.APIRequests(), b.fake.Requests()
		resp, body := b.proxyCall(t, method, "/v1/accounts/sa/proxy"+path, roKey, nil, header)
		if method == http.MethodHead {
			body = `{"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "-"}}` // HEAD answers have no body
		}
		wantProxyError(t, resp, body, http.StatusForbidden, "PERMISSION_DENIED")
		if method != http.MethodHead && (!strings.Contains(body, "GRANT_LIMITED") || !strings.Contains(body, "allows only http_methods GET")) {
			t.Errorf("%s %s: the refusal does not say GRANT_LIMITED and the limits: %s", method, path, body)
		}
		if b.fake.APIRequests() != apiBefore || b.fake.Requests() != tokensBefore {
			t.Fatalf("%s %s was refused, but the API got %d requests and the token endpoint %d", method, path,
				b.fake.APIRequests()-apiBefore, b.fake.Requests()-tokensBefore)
		}
	}

	refused := func(t *testing.T, method, path string) { t.Helper(); refusedWith(t, method, path, nil) }

	t.Run("within the limits", func(t *testing.T) {
		allowed(t, http.MethodGet, "/v2/systemgroups", "/v2/systemgroups")
		allowed(t, http.MethodGet, "/v2/systemgroups/5f1e/members?limit=10", "/v2/systemgroups/5f1e/members")
		allowed(t, http.MethodGet, "/v2/system%67roups", "/v2/system%67roups") // the same segment, encoded
	})
	t.Run("outside the limits nothing is forwarded", func(t *testing.T) {
		for _, c := range []struct{ method, path string }{
			{http.MethodPost, "/v2/systemgroups"},
			{http.MethodDelete, "/v2/systemgroups/5f1e"},
			{http.MethodHead, "/v2/systemgroups"},
			{http.MethodGet, "/v2/users"},
			{http.MethodGet, "/v2/systemgroupsx"},
			{http.MethodGet, "/v2/systemgroups%78"},
			{http.MethodGet, "/v2/%75sers"},
			{http.MethodGet, "/V2/systemgroups"},
			{http.MethodGet, "/v2"},
			{http.MethodGet, "/v2/systemgroups;x/members"},
			{http.MethodGet, "/v2/systemgroups/..;/users"}, // a dot segment to some servers
			{http.MethodGet, "/v2/systemgroups/%2e%2e;x/users"},
		} {
			refused(t, c.method, c.path)
		}
		// A GET that asks the API to take it for another method.
		for _, h := range []string{"X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "X_HTTP_METHOD_OVERRIDE", "X-Original-Method"} {
			refusedWith(t, http.MethodGet, "/v2/systemgroups/5f1e", http.Header{h: {"DELETE"}})
		}
		refused(t, http.MethodGet, "/v2/systemgroups/5f1e?_method=DELETE")
		refused(t, http.MethodGet, "/v2/systemgroups/5f1e?x-http-method-override=DELETE")
		// A limited grant does not widen the caller's reach to other accounts.
		b.link(t, "other")
		before := b.fake.APIRequests()
		resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/other/proxy/v2/systemgroups", roKey, nil, nil)
		wantProxyError(t, resp, body, http.StatusForbidden, "PERMISSION_DENIED")
		if strings.Contains(body, "GRANT_LIMITED") || b.fake.APIRequests() != before {
			t.Fatalf("a call to an account without a grant: %s", body)
		}
	})
	t.Run("a limited grant gets no tokens", func(t *testing.T) {
		before := b.fake.Requests()
		_, err := credbrokerv1.NewTokenServiceClient(b.dial(t, roKey, nil)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/sa"})
		st := wantCode(t, err, codes.PermissionDenied, "GRANT_LIMITED")
		if !strings.Contains(st.Message(), "egress proxy") || b.fake.Requests() != before {
			t.Fatalf("GetToken: %q, %d token requests", st.Message(), b.fake.Requests()-before)
		}
		if b.token(t, "sa").GetAccessToken() == "" { // the unlimited grant still does
			t.Fatal("no token for the unlimited grant")
		}
	})
	t.Run("refusals and the grant are audited", func(t *testing.T) {
		ev := proxyEvent(t, b, "/v2/systemgroups;x/members")
		if ev.GetCode() != "PERMISSION_DENIED" || ev.GetPrincipal() != ro || ev.GetResource() != "accounts/sa" || ev.GetProxyCall().GetStatus() != 0 ||
			ev.GetDetail() != "outside the grant's limits: http_methods GET; path_prefixes /v2/systemgroups" {
			t.Errorf("refused call's event: %v", ev)
		}
		events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/sa", Principal: "callerKeys/bootstrap-admin"})
		if err != nil {
			t.Fatal(err)
		}
		var details []string
		for _, ev := range events.GetEvents() {
			details = append(details, ev.GetDetail())
		}
		if !slices.Contains(details, "grant callerKeys/ro limited to http_methods GET; path_prefixes /v2/systemgroups") {
			t.Errorf("grant events' details: %q", details)
		}
	})

	t.Run("the same grant again changes nothing", func(t *testing.T) {
		before := b.account(t, "sa")
		after := b.limitedGrant(t, "sa", ro, []string{"GET", "GET"}, []string{"/v2/systemgroups"})
		if !after.GetUpdateTime().AsTime().Equal(before.GetUpdateTime().AsTime()) {
			t.Fatalf("the account was rewritten: update_time %v -> %v", before.GetUpdateTime().AsTime(), after.GetUpdateTime().AsTime())
		}
	})
	t.Run("other limits replace the grant's", func(t *testing.T) {
		before := grantOf(b.account(t, "sa"), ro)
		g := grantOf(b.limitedGrant(t, "sa", ro, []string{"HEAD", "GET"}, []string{"/v2/systemusers", "/v2/systemgroups"}), ro)
		if !slices.Equal(g.GetHttpMethods(), []string{"GET", "HEAD"}) || !slices.Equal(g.GetPathPrefixes(), []string{"/v2/systemgroups", "/v2/systemusers"}) ||
			!g.GetCreateTime().AsTime().Equal(before.GetCreateTime().AsTime()) || g.GetCreator() != before.GetCreator() {
			t.Fatalf("re-granted with other limits: %v", g)
		}
		events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/sa", PageSize: 1})
		if err != nil || events.GetEvents()[0].GetDetail() != "grant callerKeys/ro limited to http_methods GET,HEAD; path_prefixes /v2/systemgroups,/v2/systemusers" {
			t.Fatalf("the change's audit event: %v %v", events, err)
		}
		allowed(t, http.MethodGet, "/v2/systemusers/1", "/v2/systemusers/1")
	})

	// The limits are stored, not only held in memory.
	b = b.restart(t)
	if g := grantOf(b.account(t, "sa"), ro); !slices.Equal(g.GetHttpMethods(), []string{"GET", "HEAD"}) || len(g.GetPathPrefixes()) != 2 {
		t.Fatalf("after a restart the grant is %v", g)
	}
	refused(t, http.MethodPost, "/v2/systemusers")
	refused(t, http.MethodGet, "/v2/users")
	allowed(t, http.MethodHead, "/v2/systemusers", "/v2/systemusers")
	t.Run("a grant without limits lifts them", func(t *testing.T) {
		if g := grantOf(b.limitedGrant(t, "sa", ro, nil, nil), ro); len(g.GetHttpMethods())+len(g.GetPathPrefixes()) != 0 {
			t.Fatalf("re-granted without limits: %v", g)
		}
		if _, err := credbrokerv1.NewTokenServiceClient(b.dial(t, roKey, nil)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/sa"}); err != nil {
			t.Fatalf("GetToken with an unlimited grant: %v", err)
		}
	})
}

func TestGrantLimitsAreValidated(t *testing.T) {
	b := startBroker(t)
	b.link(t, "sa")
	many := make([]string, 17)
	for i := range many {
		many[i] = "/v2/p" + strings.Repeat("x", i)
	}
	for _, c := range []struct {
		methods, prefixes []string
		field             string
	}{
		{[]string{"get"}, nil, "http_methods"},
		{[]string{"TRACE"}, nil, "http_methods"},
		{[]string{"CONNECT"}, nil, "http_methods"},
		{[]string{""}, nil, "http_methods"},
		{[]string{"GET", "GET", "GET", "GET", "GET", "GET", "GET", "GET"}, nil, "http_methods"},
		{nil, []string{"v2/systemgroups"}, "path_prefixes"},
		{nil, []string{""}, "path_prefixes"},
		{nil, []string{"/v2/"}, "path_prefixes"},
		{nil, []string{"/v2//systemgroups"}, "path_prefixes"},
		{nil, []string{"/v2/../users"}, "path_prefixes"},
		{nil, []string{"/v2/./users"}, "path_prefixes"},
		{nil, []string{"/v2/systemgroups?limit=1"}, "path_prefixes"},
		{nil, []string{"/v2/systemgroups#x"}, "path_prefixes"},
		{nil, []string{"/v2/%2e%2e"}, "path_prefixes"},
		{nil, []string{"/v2/system groups"}, "path_prefixes"},
		{nil, []string{"/v2\\users"}, "path_prefixes"},
		{nil, []string{"/v2/\x00"}, "path_prefixes"},
		{nil, []string{"/" + strings.Repeat("a", 256)}, "path_prefixes"},
		{nil, many, "path_prefixes"},
		{[]string{"GET"}, []string{"/v2/systemgroups", "relative"}, "path_prefixes"},
	} {
		_, err := b.accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{
			Name: "accounts/sa", Principal: "callerKeys/bad", HttpMethods: c.methods, PathPrefixes: c.prefixes,
		})
		wantCode(t, err, codes.InvalidArgument, c.field)
	}
	if g := grantOf(b.account(t, "sa"), "callerKeys/bad"); g != nil {
		t.Fatalf("a refused grant was stored: %v", g)
	}
	// "/" allows every path, but still makes the grant proxy-only.
	if g := grantOf(b.limitedGrant(t, "sa", svcPrincipal, nil, []string{"/"}), svcPrincipal); !slices.Equal(g.GetPathPrefixes(), []string{"/"}) {
		t.Fatalf("grant with the prefix /: %v", g)
	}
	_, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/sa"})
	wantCode(t, err, codes.PermissionDenied, "GRANT_LIMITED")
	if resp, body := b.proxyCall(t, http.MethodDelete, "/v1/accounts/sa/proxy/v2/anything/at/all", b.keys.svc, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("a call below /: HTTP %d %s", resp.StatusCode, body)
	}
}
