package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
)

// A connect link, from gRPC: whoever opens it (no session) sees only that
// account's form, a wrong secret next to its field, then links the
// account and sees a confirmation, nothing else; the link then refuses to
// open or link again; a tampered link is refused; a link left unused
// expires, with an audit event, and says so. Creation, use and expiry are
// in the account's audit trail; no page or log holds the secret.
func TestConnectLinks(t *testing.T) {
	ctx := context.Background()
	cfg, fake, logs := newConfig(t)
	var offset atomic.Int64
	cfg.Hub.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	connects := credbrokerv1.NewConnectServiceClient(b.conn)
	create := func(id string, p credbrokerv1.Provider, ttl time.Duration) (*credbrokerv1.CreateConnectSessionResponse, error) {
		req := &credbrokerv1.CreateConnectSessionRequest{AccountId: id, Provider: p, DisplayName: "Globex JumpCloud"}
		if ttl != 0 {
			req.Ttl = durationpb.New(ttl)
		}
		return connects.CreateConnectSession(ctx, req)
	}
	_, err := create("acme", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 0)
	wantCode(t, err, codes.AlreadyExists, "")
	_, err = create("globex", credbrokerv1.Provider_PROVIDER_OAUTH2_CLIENT_CREDENTIALS, 0)
	wantCode(t, err, codes.InvalidArgument, "provider")
	_, err = create("globex", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 8*24*time.Hour)
	wantCode(t, err, codes.InvalidArgument, "ttl")
	_, err = create("Not An Id", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 0)
	wantCode(t, err, codes.InvalidArgument, "account_id")
	resp, err := create("globex", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 0)
	if err != nil {
		t.Fatal(err)
	}
	cs := resp.GetConnectSession()
	if !strings.HasPrefix(resp.GetUrl(), b.hubURL+"/connect/") || cs.GetAccountId() != "globex" || cs.GetCreator() != "callerKeys/bootstrap-admin" ||
		cs.GetExpireTime().AsTime().Sub(cs.GetCreateTime().AsTime()) != 30*time.Minute {
		t.Fatalf("the link made: %v", resp)
	}
	path := strings.TrimPrefix(resp.GetUrl(), b.hubURL)

	visitor := &hubClient{t: t, base: b.hubURL}
	r, body := visitor.do("GET", path, nil, nil)
	if r.StatusCode != http.StatusOK || !strings.Contains(body, "globex") || !strings.Contains(body, `name="client_secret"`) ||
		strings.Contains(body, "acme") || strings.Contains(body, "/accounts") || strings.Contains(body, "Caller keys") {
		t.Fatalf("the link's page: %d\n%s", r.StatusCode, body)
	}
	form := func(secret string) url.Values {
		return url.Values{"client_id": {clientID}, "client_secret": {secret}, "region": {"us"}, "account_id": {"hijack"}, "kind": {"jumpcloud-api-key"}}
	}
	const wrongSecret = "wrong-secret-canary-c0ffee"
	if r, body = visitor.do("POST", path, form(wrongSecret), nil); r.StatusCode != http.StatusBadRequest || !strings.Contains(fieldError(body, "client_secret"), "rejected") || !strings.Contains(body, "once, until 20") {
		t.Fatalf("a wrong secret through the link: %d\n%s", r.StatusCode, body)
	}
	if r, body = visitor.do("POST", path, form(clientSecret), nil); r.StatusCode != http.StatusOK || !strings.Contains(body, "is linked") || strings.Contains(body, "/accounts") {
		t.Fatalf("linking through the link: %d\n%s", r.StatusCode, body)
	}
	got, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/globex"})
	if err != nil || got.GetAccount().GetDisplayName() != "Globex JumpCloud" || got.GetAccount().GetProvider() != credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT {
		t.Fatalf("the account linked through the link: %v %v", got, err)
	}
	if _, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/hijack"}); err == nil {
		t.Fatal("the link's form chose its own account id")
	}
	for _, method := range []string{"GET", "POST"} {
		r, body = visitor.do(method, path, form(clientSecret), nil)
		if r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "was used") {
			t.Fatalf("%s of a used link: %d\n%s", method, r.StatusCode, body)
		}
	}
	tampered := path[:len(path)-1] + map[bool]string{true: "B", false: "A"}[strings.HasSuffix(path, "A")]
	if r, body = visitor.do("GET", tampered, nil, nil); r.StatusCode != http.StatusNotFound || !strings.Contains(body, "not valid") {
		t.Fatalf("a tampered link: %d\n%s", r.StatusCode, body)
	}

	admin := &hubClient{t: t, base: b.hubURL}
	admin.signIn(b.keys.admin)
	// One live link an account; an admin can list and revoke them.
	resp, err = create("initrode", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = create("initrode", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY, 0)
	wantCode(t, err, codes.FailedPrecondition, "")
	live, err := connects.ListConnectSessions(ctx, &credbrokerv1.ListConnectSessionsRequest{})
	if err != nil || len(live.GetConnectSessions()) != 1 || live.GetConnectSessions()[0].GetName() != resp.GetConnectSession().GetName() {
		t.Fatalf("the live links: %v %v", live, err)
	}
	if _, err := connects.RevokeConnectSession(ctx, &credbrokerv1.RevokeConnectSessionRequest{Name: resp.GetConnectSession().GetName()}); err != nil {
		t.Fatal(err)
	}
	revoked := strings.TrimPrefix(resp.GetUrl(), b.hubURL)
	// A link is not a way to try credentials: the provider refusing
	// MaxFailures of its uses revokes it.
	resp, err = create("initrode", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, 0)
	if err != nil {
		t.Fatalf("a new link once the old one was revoked: %v", err)
	}
	capped := strings.TrimPrefix(resp.GetUrl(), b.hubURL)
	for i := range 10 {
		if r, body = admin.do("POST", capped, form(fmt.Sprintf("%s-%d", wrongSecret, i)), nil); r.StatusCode != http.StatusBadRequest {
			t.Fatalf("wrong secret %d through a link: %d\n%s", i, r.StatusCode, body)
		}
	}
	for _, link := range []string{capped, revoked} {
		if r, body = admin.do("GET", link, nil, nil); r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "revoked") {
			t.Fatalf("a revoked link: %d\n%s", r.StatusCode, body)
		}
	}

	// A link left unused expires.
	resp, err = create("initech", credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	late := strings.TrimPrefix(resp.GetUrl(), b.hubURL)
	if r, body = visitor.do("GET", late, nil, nil); r.StatusCode != http.StatusOK || !strings.Contains(body, `name="api_key"`) {
		t.Fatalf("an API key link's page: %d\n%s", r.StatusCode, body)
	}
	offset.Store(int64(2 * time.Minute))
	if r, body = visitor.do("GET", late, nil, nil); r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "expired") {
		t.Fatalf("an expired link: %d\n%s", r.StatusCode, body)
	}
	for range 2 { // audited once
		if err := server.SweepConnectLinks(b.srv); err != nil {
			t.Fatal(err)
		}
	}

	// Guessing links from an address slows that down, and does not lock
	// out the admins behind the same address.
	for range 30 {
		visitor.do("GET", tampered, nil, nil)
	}
	if r, _ = visitor.do("GET", tampered, nil, nil); r.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("guessing links: %d", r.StatusCode)
	}
	if r, _ = admin.do("GET", "/accounts", nil, nil); r.StatusCode != http.StatusOK {
		t.Fatalf("an admin's page from the address that guessed links: %d", r.StatusCode)
	}
	if _, err := b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{}); err != nil {
		t.Fatalf("an admin's call from the address that guessed links: %v", err)
	}
	guessed := logs.String()

	count := func(account, method, principal string) int {
		t.Helper()
		events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: account, PageSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range events.GetEvents() {
			if ev.GetMethod() == method && strings.HasPrefix(ev.GetPrincipal(), principal) && ev.GetCode() == "OK" {
				n++
			}
		}
		return n
	}
	for _, want := range []struct {
		account, method, principal string
		n                          int
	}{
		{"accounts/globex", credbrokerv1.ConnectService_CreateConnectSession_FullMethodName, "callerKeys/bootstrap-admin", 1},
		{"accounts/globex", "connect: link an account", "connectSessions/cs-", 2}, // the account linked, the link used up
		{"accounts/initech", "connect_session_expired", "credbroker", 1},
		{"accounts/initrode", "connect_session_revoked", "credbroker", 1},
		{"accounts/initrode", credbrokerv1.ConnectService_RevokeConnectSession_FullMethodName, "callerKeys/bootstrap-admin", 1},
	} {
		if n := count(want.account, want.method, want.principal); n != want.n {
			t.Errorf("%d audit events %q by %s on %s; want %d", n, want.method, want.principal, want.account, want.n)
		}
	}
	visitor.noCanaries(logs.String(), 10, "globex", map[string]string{"client secret": clientSecret, "wrong secret": wrongSecret})
	if r, _ = visitor.do("POST", late, form(clientSecret), map[string]string{"Sec-Fetch-Site": "cross-site"}); r.StatusCode != http.StatusForbidden {
		t.Fatalf("a link's form sent from another site: %d", r.StatusCode)
	}
	if !strings.Contains(logs.String(), "refused a Hub form sent from another site") || len(guessed) == 0 {
		t.Fatal("no log of the refused form to scan")
	}
	for _, link := range []string{path, late, capped, revoked} {
		if strings.Contains(logs.String(), strings.TrimPrefix(link, "/connect/")) {
			t.Error("the log holds a connect link")
		}
	}
}

// An admin makes a connect link in the Hub: shown once, with a copy
// button; a taken account id is shown next to its field. Without a Hub
// there is nowhere to open one, so none is made.
func TestHubMakesConnectLinks(t *testing.T) {
	b := startBroker(t)
	b.link(t, "acme")
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	body := h.post("/connect-links", "/connect-links", url.Values{"account_id": {"acme"}, "kind": {"jumpcloud"}, "ttl": {"30m"}}, http.StatusConflict, "")
	if fieldError(body, "account_id") == "" {
		t.Fatalf("a link for an existing account:\n%s", body)
	}
	body = h.post("/connect-links", "/connect-links", url.Values{"account_id": {"globex"}, "kind": {"jumpcloud-api-key"}, "ttl": {"2h"}}, http.StatusOK, "")
	m := regexp.MustCompile(`id="new_link" value="(` + regexp.QuoteMeta(b.hubURL) + `/connect/[A-Za-z0-9_-]+)"`).FindStringSubmatch(body)
	if m == nil || !strings.Contains(body, `data-copy="new_link"`) {
		t.Fatalf("the link made in the Hub:\n%s", body)
	}
	visitor := &hubClient{t: t, base: b.hubURL}
	if r, body := visitor.do("GET", strings.TrimPrefix(m[1], b.hubURL), nil, nil); r.StatusCode != http.StatusOK || !strings.Contains(body, `name="api_key"`) {
		t.Fatalf("the link's page: %d\n%s", r.StatusCode, body)
	}
	body = h.post("/connect-links", "/connect-links", url.Values{"account_id": {"example"}, "kind": {"oauth2-code"}, "ttl": {"30m"},
		"authorization_url": {"ftp://example.com/authorize"}, "token_url": {"https://example.com/token"}, "client_id": {"app"}, "client_secret": {"canary-APP-SECRET-links"}}, http.StatusBadRequest, "")
	if fieldError(body, "authorization_url") == "" || strings.Contains(body, "canary-APP-SECRET-links") {
		t.Fatalf("a link with a malformed authorization URL:\n%s", body)
	}
	body = h.post("/connect-links", "/connect-links", url.Values{"account_id": {"example"}, "kind": {"oauth2-code"}, "ttl": {"30m"},
		"authorization_url": {"https://example.com/authorize"}, "token_url": {"https://example.com/token"}, "client_id": {"app"}, "client_secret": {"canary-APP-SECRET-links"}}, http.StatusOK, "")
	if !strings.Contains(body, `id="new_link"`) || strings.Contains(body, "canary-APP-SECRET-links") {
		t.Fatalf("a link for an account that signs in by redirect:\n%s", body)
	}

	cfg, fake, logs := newConfig(t)
	cfg.HubListenAddr = "off"
	off := startWith(t, cfg, fake, logs)
	_, err := credbrokerv1.NewConnectServiceClient(off.conn).CreateConnectSession(context.Background(), &credbrokerv1.CreateConnectSessionRequest{
		AccountId: "globex", Provider: credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT,
	})
	wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_HUB_OFF.String())
}
