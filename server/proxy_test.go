package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/devpki"
)

const (
	apiKey     = "canary-API-KEY-7c21d0e4"
	otherOrgID = "5b0000000000000000000001"
)

func apiKeyRequest(id, key, org string) *credbrokerv1.CreateAccountRequest {
	return &credbrokerv1.CreateAccountRequest{
		AccountId: id,
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudApiKey{JumpcloudApiKey: &credbrokerv1.JumpCloudAPIKeyCredentials{
			ApiKey: key, Region: credbrokerv1.Region_REGION_US, OrgId: org,
		}},
	}
}

// linkAPIKey links an API-key account and grants the "svc" caller key access.
func (b *broker) linkAPIKey(t testing.TB, id string) {
	t.Helper()
	b.fake.SetAPIKey(apiKey, orgID)
	if _, err := b.accounts.CreateAccount(context.Background(), apiKeyRequest(id, apiKey, orgID)); err != nil {
		t.Fatalf("CreateAccount(%s): %v", id, err)
	}
	b.grant(t, id, svcPrincipal)
}

// proxyClient talks to the egress proxy, presenting cert if given, and
// does not follow redirects.
func (b *broker) proxyClient(cert *tls.Certificate) *http.Client {
	tr := &http.Transport{}
	if b.roots != nil {
		tr.TLSClientConfig = &tls.Config{RootCAs: b.roots}
		if cert != nil {
			tr.TLSClientConfig.Certificates = []tls.Certificate{*cert}
		}
	}
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// proxyCall sends a request to the egress proxy as the caller with key
// (none if empty) and returns the answer with its body read.
func (b *broker) proxyCall(t testing.TB, method, path, key string, body io.Reader, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, b.proxyURL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	if key != "" {
		req.Header.Set("Proxy-Authorization", "Bearer "+key)
	}
	resp, err := b.proxyClient(nil).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, string(data)
}

// wantProxyError checks one of the proxy's own error answers.
func wantProxyError(t *testing.T, resp *http.Response, body string, httpStatus int, code string) {
	t.Helper()
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Status  string `json:"status"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if resp.StatusCode != httpStatus || resp.Header.Get("Credbroker-Error") != code || json.Unmarshal([]byte(body), &e) != nil ||
		e.Error.Code != httpStatus || e.Error.Status != code || e.Error.Message == "" {
		t.Fatalf("got HTTP %d, Credbroker-Error %q, body %s; want %d %s", resp.StatusCode, resp.Header.Get("Credbroker-Error"), body, httpStatus, code)
	}
}

func TestAPIKeyAccountLinking(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	b.fake.SetAPIKey(apiKey, orgID)

	// Rejected: a wrong key, an organization the key is not in. Nothing is stored.
	for _, req := range []*credbrokerv1.CreateAccountRequest{
		apiKeyRequest("k1", "canary-WRONG-KEY", orgID),
		apiKeyRequest("k1", apiKey, otherOrgID),
	} {
		_, err := b.accounts.CreateAccount(ctx, req)
		st := wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
		if strings.Contains(st.Message(), "canary") {
			t.Fatalf("the error repeats the key: %q", st.Message())
		}
		_, err = b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/k1"})
		wantCode(t, err, codes.NotFound, "")
	}
	// A malformed organization ID is refused before anything calls out.
	before := b.fake.APIRequests()
	_, err := b.accounts.CreateAccount(ctx, apiKeyRequest("k1", apiKey, "5B12"))
	wantCode(t, err, codes.InvalidArgument, "jumpcloud_api_key.org_id")
	if b.fake.APIRequests() != before {
		t.Fatal("a malformed org_id reached the API")
	}

	resp, err := b.accounts.CreateAccount(ctx, apiKeyRequest("k1", apiKey, orgID))
	if err != nil {
		t.Fatal(err)
	}
	a := resp.GetAccount()
	got := b.fake.LastAPIRequest()
	if a.GetProvider() != credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY || a.GetTokenUrl() != "" || a.GetOrgId() != orgID ||
		a.GetApiBaseUrl() != b.cfg.Provider.JumpCloudAPIURLUS || a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE {
		t.Fatalf("linked API-key account: %v", a)
	}
	if got.Method != http.MethodGet || got.Path != "/organizations" || got.Header.Get("x-api-key") != apiKey || got.Header.Get("x-org-id") != orgID {
		t.Fatalf("the link check sent %s %s with x-org-id %q (key sent: %v)", got.Method, got.Path, got.Header.Get("x-org-id"), got.Header.Get("x-api-key") == apiKey)
	}

	// The key is never handed out, not even to a caller with a grant.
	b.grant(t, "k1", svcPrincipal)
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/k1"})
	st := wantCode(t, err, codes.FailedPrecondition, "PROXY_ONLY")
	if !strings.Contains(st.Message(), "proxy") {
		t.Fatalf("GetToken on an API-key account: %q does not point to the proxy", st.Message())
	}

	// It survives a restart: the key is opened again from the store.
	b = b.restart(t)
	r, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/k1/proxy/v2/systems", b.keys.svc, nil, nil)
	if r.StatusCode != http.StatusOK || b.fake.LastAPIRequest().Header.Get("x-api-key") != apiKey {
		t.Fatalf("proxied call after a restart: HTTP %d %s", r.StatusCode, body)
	}
}

func TestProxyInjectsCredentialsAndStripsTheCallers(t *testing.T) {
	b := startBroker(t)
	b.linkAPIKey(t, "keyed")
	b.link(t, "sa")
	const singleTenantKey = "canary-API-KEY-single-tenant"
	b.fake.SetAPIKey(singleTenantKey, "")
	if _, err := b.accounts.CreateAccount(context.Background(), apiKeyRequest("single", singleTenantKey, "")); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "single", svcPrincipal)

	callerHeaders := http.Header{
		"Authorization": {"Bearer caller-own-token"},
		"X-Api-Key":     {"caller-own-key"},
		"X-Org-Id":      {otherOrgID},
		"Cookie":        {"session=caller"},
		"Connection":    {"X-Drop-Me"},
		"X-Drop-Me":     {"hop-by-hop"},
		"Accept":        {"application/json"},
	}
	for _, c := range []struct{ account, auth, key, org string }{
		{"keyed", "", apiKey, orgID},
		{"single", "", singleTenantKey, ""},
		{"sa", "Bearer " + b.token(t, "sa").GetAccessToken(), "", orgID},
	} {
		resp, body := b.proxyCall(t, http.MethodPost, "/v1/accounts/"+c.account+"/proxy/v2/systems/a%20b?limit=5&skip=0", b.keys.svc,
			strings.NewReader(`{"x":1}`), callerHeaders)
		got := b.fake.LastAPIRequest()
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"body_bytes":7`) {
			t.Fatalf("%s: HTTP %d %s", c.account, resp.StatusCode, body)
		}
		if got.Method != http.MethodPost || got.Path != "/v2/systems/a%20b" || got.RawQuery != "limit=5&skip=0" || string(got.Body) != `{"x":1}` {
			t.Fatalf("%s: upstream got %s %s?%s %q", c.account, got.Method, got.Path, got.RawQuery, got.Body)
		}
		if got.Header.Get("Authorization") != c.auth || got.Header.Get("x-api-key") != c.key || got.Header.Get("x-org-id") != c.org {
			t.Fatalf("%s: upstream credentials: authorization ok %v, key ok %v, x-org-id %q",
				c.account, got.Header.Get("Authorization") == c.auth, got.Header.Get("x-api-key") == c.key, got.Header.Get("x-org-id"))
		}
		for _, h := range []string{"Proxy-Authorization", "Cookie", "X-Drop-Me"} {
			if v := got.Header.Get(h); v != "" {
				t.Fatalf("%s: %s reached the API", c.account, h)
			}
		}
		if got.Header.Get("Accept") != "application/json" {
			t.Fatalf("%s: Accept was not forwarded", c.account)
		}
	}
}

func TestProxyRefreshesARejectedTokenOnce(t *testing.T) {
	b := startBroker(t)
	b.link(t, "sa")
	first := b.token(t, "sa").GetAccessToken()

	// The API stops accepting the token: the proxy gets a new one and
	// sends the call (with its body) again.
	b.fake.RevokeTokens()
	before := b.fake.Requests()
	resp, body := b.proxyCall(t, http.MethodPut, "/v1/accounts/sa/proxy/v2/things/1", b.keys.svc, strings.NewReader("payload"), nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"body_bytes":7`) || b.fake.Requests() != before+1 {
		t.Fatalf("after revoking the token: HTTP %d %s, %d token requests", resp.StatusCode, body, b.fake.Requests()-before)
	}
	if b.fake.LastAPIRequest().Header.Get("Authorization") == "Bearer "+first || b.token(t, "sa").GetAccessToken() == first {
		t.Fatal("the rejected token is still in use")
	}

	// Rejected again at once: the 401 is passed back without another token
	// request, so an API that answers 401 cannot make the broker hammer
	// the token endpoint.
	b.fake.RevokeTokens()
	before = b.fake.Requests()
	resp, _ = b.proxyCall(t, http.MethodGet, "/v1/accounts/sa/proxy/v2/systems", b.keys.svc, nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Credbroker-Error") != "" || b.fake.Requests() != before {
		t.Fatalf("second rejection: HTTP %d (Credbroker-Error %q), %d token requests", resp.StatusCode, resp.Header.Get("Credbroker-Error"), b.fake.Requests()-before)
	}
}

func TestProxyIsNotAnOpenProxy(t *testing.T) {
	cfg, fake, logs := newConfig(t)
	cfg.Proxy.MaxRequestBytes, cfg.Proxy.MaxResponseBytes = 1024, 4096
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.linkAPIKey(t, "other")

	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { elsewhere.Add(1) }))
	t.Cleanup(other.Close)

	t.Run("paths that climb out are refused", func(t *testing.T) {
		for _, p := range []string{
			"/v1/accounts/keyed/proxy/../../other/proxy/v2/systems",
			"/v1/accounts/keyed/proxy/%2e%2e/%2e%2e/other/proxy/x",
			"/v1/accounts/keyed/proxy/v2%2F..%2F..%2F..%2Fother",
			"/v1/accounts/keyed/proxy//" + strings.TrimPrefix(other.URL, "http://") + "/x",
			"/v1/accounts/keyed/proxy/v2%5c..%5cx",
			"/v1/accounts/Keyed/proxy/x",
			"/v1/accounts/keyed/x",
		} {
			before := b.fake.APIRequests()
			resp, body := rawProxyCall(t, b, "GET "+p+" HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Bearer "+b.keys.svc+"\r\n\r\n")
			if resp.StatusCode != http.StatusBadRequest || b.fake.APIRequests() != before {
				t.Fatalf("%s: HTTP %d %s, %d API requests", p, resp.StatusCode, body, b.fake.APIRequests()-before)
			}
		}
	})
	t.Run("an absolute URL cannot pick the host", func(t *testing.T) {
		resp, body := rawProxyCall(t, b, "GET "+other.URL+"/v1/accounts/keyed/proxy/v2/systems HTTP/1.1\r\nHost: "+strings.TrimPrefix(other.URL, "http://")+"\r\nProxy-Authorization: Bearer "+b.keys.svc+"\r\n\r\n")
		if resp.StatusCode != http.StatusOK || elsewhere.Load() != 0 || b.fake.LastAPIRequest().Path != "/v2/systems" {
			t.Fatalf("HTTP %d %s; the other host got %d requests", resp.StatusCode, body, elsewhere.Load())
		}
	})
	t.Run("redirects are passed back, not followed", func(t *testing.T) {
		b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, other.URL+"/steal", http.StatusFound)
		}))
		defer b.fake.SetAPIHandler(nil)
		resp, _ := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != other.URL+"/steal" || elsewhere.Load() != 0 {
			t.Fatalf("HTTP %d, Location %q; the other host got %d requests", resp.StatusCode, resp.Header.Get("Location"), elsewhere.Load())
		}
	})
	t.Run("without a grant nothing reaches the API", func(t *testing.T) {
		key := b.createKey(t, "nogrant", credbrokerv1.Role_ROLE_CALLER, time.Time{})
		before := b.fake.APIRequests()
		resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", key, nil, nil)
		wantProxyError(t, resp, body, http.StatusForbidden, "PERMISSION_DENIED")
		resp, body = b.proxyCall(t, http.MethodGet, "/v1/accounts/nosuch/proxy/v2/systems", key, nil, nil)
		wantProxyError(t, resp, body, http.StatusForbidden, "PERMISSION_DENIED")
		resp, body = b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", "", nil, http.Header{"Authorization": {"Bearer " + key}})
		wantProxyError(t, resp, body, http.StatusUnauthorized, "UNAUTHENTICATED")
		resp, body = b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", "cbk_not-a-key", nil, nil)
		wantProxyError(t, resp, body, http.StatusUnauthorized, "UNAUTHENTICATED")
		if b.fake.APIRequests() != before {
			t.Fatalf("%d refused calls reached the API", b.fake.APIRequests()-before)
		}
	})
	t.Run("bodies are bounded", func(t *testing.T) {
		before := b.fake.APIRequests()
		resp, body := b.proxyCall(t, http.MethodPost, "/v1/accounts/keyed/proxy/v2/x", b.keys.svc, strings.NewReader(strings.Repeat("a", 1025)), nil)
		wantProxyError(t, resp, body, http.StatusRequestEntityTooLarge, "RESOURCE_EXHAUSTED")
		// Without a length the body is cut off at the bound while it streams.
		resp, body = b.proxyCall(t, http.MethodPost, "/v1/accounts/keyed/proxy/v2/x", b.keys.svc, io.MultiReader(strings.NewReader(strings.Repeat("a", 2048))), nil)
		if resp.StatusCode != http.StatusRequestEntityTooLarge && resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("streamed oversized request: HTTP %d %s", resp.StatusCode, body)
		}
		if b.fake.APIRequests() > before+1 || len(b.fake.LastAPIRequest().Body) > 1024 {
			t.Fatalf("an oversized request body reached the API (%d bytes)", len(b.fake.LastAPIRequest().Body))
		}

		b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Has("chunked") {
				w.(http.Flusher).Flush() // no Content-Length: the size shows only while streaming
			} else {
				w.Header().Set("Content-Length", "5000")
			}
			_, _ = w.Write([]byte(strings.Repeat("b", 5000)))
		}))
		defer b.fake.SetAPIHandler(nil)
		resp, body = b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/big", b.keys.svc, nil, nil)
		wantProxyError(t, resp, body, http.StatusBadGateway, "RESOURCE_EXHAUSTED")

		req, _ := http.NewRequest(http.MethodGet, b.proxyURL+"/v1/accounts/keyed/proxy/v2/big?chunked=1", nil)
		req.Header.Set("Proxy-Authorization", "Bearer "+b.keys.svc)
		r, err := b.proxyClient(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err == nil || len(data) > 4096 {
			t.Fatalf("streamed oversized response: %d bytes, error %v; want it cut off at 4096 with an error", len(data), err)
		}
	})
	t.Run("an account without an API base URL", func(t *testing.T) {
		if _, err := b.accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
			AccountId: "nobase", Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{
				TokenUrl: b.cfg.Provider.JumpCloudTokenURLUS, ClientId: clientID, ClientSecret: clientSecret, Scopes: []string{"api"},
			}},
		}); err != nil {
			t.Fatal(err)
		}
		b.grant(t, "nobase", svcPrincipal)
		resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/nobase/proxy/v2/x", b.keys.svc, nil, nil)
		wantProxyError(t, resp, body, http.StatusBadRequest, "FAILED_PRECONDITION")
		if !strings.Contains(body, "NO_API_BASE_URL") {
			t.Fatalf("no ErrorInfo reason: %s", body)
		}
	})
	t.Run("the proxy's own methods only", func(t *testing.T) {
		resp, body := b.proxyCall(t, "TRACE", "/v1/accounts/keyed/proxy/v2/x", b.keys.svc, nil, nil)
		wantProxyError(t, resp, body, http.StatusMethodNotAllowed, "INVALID_ARGUMENT")
	})
}

// rawProxyCall writes a raw HTTP/1.1 request to the proxy, so that paths
// reach it exactly as written.
func rawProxyCall(t *testing.T, b *broker, raw string) (*http.Response, string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(b.proxyURL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, string(data)
}

func TestProxyWithClientCertificates(t *testing.T) {
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.grant(t, "keyed", "spiffe://test/billing")

	get := func(cert *tls.Certificate) *http.Response {
		resp, err := b.proxyClient(cert).Get(b.proxyURL + "/v1/accounts/keyed/proxy/v2/systems")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := get(clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/billing"}})); resp.StatusCode != http.StatusOK {
		t.Fatalf("granted certificate: HTTP %d", resp.StatusCode)
	}
	if resp := get(clientCert(t, ca, devpki.Identity{URIs: []string{"spiffe://test/other"}})); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("certificate without a grant: HTTP %d", resp.StatusCode)
	}
	otherCA, err := devpki.NewCA("other CA")
	if err != nil {
		t.Fatal(err)
	}
	if resp := get(clientCert(t, otherCA, devpki.Identity{URIs: []string{"spiffe://test/billing"}})); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("certificate from another CA: HTTP %d", resp.StatusCode)
	}
}

func TestProxyCallsAreAuditedWithoutSecrets(t *testing.T) {
	cfg, fake, logs := newConfig(t)
	server.ShortenAuditIntervals(&cfg, 10*time.Millisecond, 0)
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.link(t, "sa")
	b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "created")
	}))

	var answers strings.Builder
	for _, account := range []string{"keyed", "sa"} {
		resp, body := b.proxyCall(t, http.MethodPost, "/v1/accounts/"+account+"/proxy/v2/users?filter=secret-query", b.keys.svc, strings.NewReader("0123456789"), nil)
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("%s: HTTP %d %s", account, resp.StatusCode, body)
		}
		fmt.Fprintf(&answers, "%v %s\n", resp.Header, body)
	}
	nogrant := b.createKey(t, "nogrant", credbrokerv1.Role_ROLE_CALLER, time.Time{})
	resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/users", nogrant, nil, nil)
	fmt.Fprintf(&answers, "%v %s\n", resp.Header, body)
	resp, body = b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/users", "", nil, nil)
	fmt.Fprintf(&answers, "%v %s\n", resp.Header, body)

	// The call without credentials is tallied with the others of its
	// address (see TestUnauthenticatedFloodKeepsTheAuditTrail).
	var proxied []*credbrokerv1.AuditEvent
	var trail strings.Builder
	eventually(t, "the tally of the call without credentials", func() bool {
		events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		proxied = proxied[:0]
		trail.Reset()
		tallied := false
		for _, ev := range events.GetEvents() {
			fmt.Fprintln(&trail, ev)
			if ev.GetMethod() == "proxy" {
				proxied = append(proxied, ev)
			}
			tallied = tallied || ev.GetMethod() == "unauthenticated_calls" && ev.GetCode() == "UNAUTHENTICATED" && strings.Contains(ev.GetDetail(), "methods: proxy 1")
		}
		return tallied
	})
	if len(proxied) != 3 {
		t.Fatalf("%d proxy events, want 3", len(proxied))
	}
	denied, sa := proxied[0], proxied[1] // newest first
	if denied.GetCode() != "PERMISSION_DENIED" || denied.GetPrincipal() != "callerKeys/nogrant" || denied.GetProxyCall().GetStatus() != 0 {
		t.Fatalf("refused call's event: %v", denied)
	}
	pc := sa.GetProxyCall()
	if sa.GetCode() != "OK" || sa.GetResource() != "accounts/sa" || sa.GetPrincipal() != svcPrincipal || pc.GetHttpMethod() != "POST" ||
		pc.GetPath() != "/v2/users" || pc.GetStatus() != http.StatusCreated || pc.GetRequestBytes() != 10 || pc.GetResponseBytes() != 7 {
		t.Fatalf("proxied call's event: %v", sa)
	}

	token := b.fake.LastToken()
	for name, out := range map[string]string{"answers": answers.String(), "audit trail": trail.String(), "logs": b.logs.String()} {
		assertAbsent(t, name, []byte(out), apiKey, clientSecret, token, "secret-query")
	}
}

func TestRejectedAPIKeyNeedsAttention(t *testing.T) {
	b := startBroker(t)
	b.linkAPIKey(t, "keyed")
	ctx := context.Background()
	state := func() *credbrokerv1.Account {
		resp, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/keyed"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAccount()
	}

	// The admin generates a new key in JumpCloud: the old one fails at once.
	b.fake.RevokeAPIKey(apiKey)
	resp, _ := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Credbroker-Error") != "" {
		t.Fatalf("HTTP %d (Credbroker-Error %q), want the API's 401", resp.StatusCode, resp.Header.Get("Credbroker-Error"))
	}
	// The broker confirms the 401 with its check of the key, off the call's path.
	eventually(t, "NEEDS_ATTENTION", func() bool {
		a := state()
		return a.GetState() == credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION &&
			a.GetStateReason() == credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_CREDENTIALS_REJECTED && a.GetLastError().GetMessage() != ""
	})
	// The key works again (here: restored at the fake): after the check
	// interval (here: a restart), a success is confirmed and the account recovers.
	b.fake.SetAPIKey(apiKey, orgID)
	b = b.restart(t)
	if resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP %d %s", resp.StatusCode, body)
	}
	eventually(t, "ACTIVE again", func() bool {
		a := state()
		return a.GetState() == credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE && a.GetLastError() == nil
	})
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/keyed", Principal: "credbroker"})
	if err != nil || len(events.GetEvents()) != 2 || !strings.HasPrefix(events.GetEvents()[1].GetDetail(), "active -> needs_attention: credentials_rejected") ||
		events.GetEvents()[0].GetDetail() != "needs_attention -> active" {
		t.Fatalf("state changes in the audit trail: %v, %v", events, err)
	}
}

// A proxied call is audited when it ends, before the end of its answer
// goes: a call whose event could not be written is cut off, and while the
// audit trail cannot be written the proxy forwards nothing.
func TestProxyRefusesWhileTheAuditTrailFails(t *testing.T) {
	b, fail := startFailingAudit(t)
	b.linkAPIKey(t, "keyed")

	fail.Store(true)
	req, err := http.NewRequest(http.MethodGet, b.proxyURL+"/v1/accounts/keyed/proxy/v2/systems", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Proxy-Authorization", "Bearer "+b.keys.svc)
	if resp, err := b.proxyClient(nil).Do(req); err == nil { // its event fails
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			t.Fatalf("a call whose audit event failed was answered whole: HTTP %d", resp.StatusCode)
		}
	}
	before := b.fake.APIRequests()
	resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil)
	wantProxyError(t, resp, body, http.StatusServiceUnavailable, "UNAVAILABLE")
	if b.fake.APIRequests() != before || !strings.Contains(body, "AUDIT_UNAVAILABLE") {
		t.Fatalf("forwarded while the audit trail fails: %s", body)
	}

	fail.Store(false)
	b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil) // refused, but its event is written
	if resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/keyed/proxy/v2/systems", b.keys.svc, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("after the audit trail recovered: HTTP %d %s", resp.StatusCode, body)
	}
}

// Every proxied call's audit event shows the API's path (after .../proxy)
// and its account, whether it was forwarded, refused for its path, or
// refused at the gate before its grant was looked at (here: over its rate
// limit).
func TestProxyEventsShowTheAPIPath(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.Gate.RateLimit, cfg.Gate.RateBurst = 0.001, 20
	b := startWith(t, cfg, fake, logs)
	b.linkAPIKey(t, "keyed")
	b.grant(t, "keyed", svcPrincipal)
	codes := map[int]int{}
	for i := range cfg.Gate.RateBurst + 1 {
		path := "/v1/accounts/keyed/proxy/v2/users"
		if i == 0 {
			path = "/v1/accounts/keyed/proxy/v2//users" // refused for its empty segment
		}
		resp, _ := b.proxyCall(t, http.MethodGet, path, b.keys.svc, nil, nil)
		codes[resp.StatusCode]++
	}
	if codes[http.StatusOK] != cfg.Gate.RateBurst-1 || codes[http.StatusBadRequest] != 1 || codes[http.StatusTooManyRequests] != 1 {
		t.Fatalf("answers: %v, want %d OK, one 400 and one 429", codes, cfg.Gate.RateBurst-1)
	}
	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Principal: svcPrincipal, PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, ev := range events.GetEvents() {
		seen[ev.GetCode()]++
		want := "/v2/users"
		if ev.GetCode() == "INVALID_ARGUMENT" {
			want = "/v2//users"
		}
		if ev.GetProxyCall().GetPath() != want || ev.GetResource() != "accounts/keyed" {
			t.Errorf("a %s call's event: path %q, resource %q", ev.GetCode(), ev.GetProxyCall().GetPath(), ev.GetResource())
		}
	}
	if seen["OK"] != cfg.Gate.RateBurst-1 || seen["INVALID_ARGUMENT"] != 1 || seen["RESOURCE_EXHAUSTED"] != 1 {
		t.Fatalf("audited: %v", seen)
	}
}
