package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// countingServer is an httptest server that counts its requests.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	n := &atomic.Int64{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, n
}

// A token endpoint or API that answers with a redirect never gets the
// credentials sent elsewhere: linking fails with PROVIDER_REDIRECTED, and an
// account whose endpoint starts redirecting needs attention.
func TestProviderRedirectsAreNotFollowed(t *testing.T) {
	t.Parallel()
	elsewhere, elsewhereRequests := countingServer(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "stolen", "token_type": "bearer", "expires_in": 3600})
	})
	var redirect atomic.Bool
	redirect.Store(true)
	endpoint, endpointRequests := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if redirect.Load() {
			http.Redirect(w, r, elsewhere.URL+r.URL.Path+"?where=elsewhere", http.StatusTemporaryRedirect)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "redirect-token", "token_type": "bearer", "expires_in": 3600})
	})
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }))
	defer api.Close()

	cfg, fake, logs := newConfig(t)
	cfg.Provider.JumpCloudAPIURLUS = endpoint.URL + "/api" // the API-key check
	b := startWith(t, cfg, fake, logs)
	ctx := context.Background()
	oauth2 := &credbrokerv1.CreateAccountRequest{AccountId: "moved", Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{
		Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{TokenUrl: endpoint.URL + "/token", ClientId: clientID, ClientSecret: clientSecret, ApiBaseUrl: api.URL},
	}}
	wantRedirected := func(what string, err error) {
		t.Helper()
		st := wantCode(t, err, codes.FailedPrecondition, "PROVIDER_REDIRECTED")
		if strings.Contains(st.Message(), "elsewhere") {
			t.Errorf("%s: the message quotes the redirect's Location: %q", what, st.Message())
		}
	}

	_, err := b.accounts.CreateAccount(ctx, oauth2)
	wantRedirected("linking an OAuth2 account", err)
	_, err = b.accounts.CreateAccount(ctx, apiKeyRequest("moved-key", apiKey, orgID))
	wantRedirected("linking an API key", err)
	if endpointRequests.Load() != 2 || elsewhereRequests.Load() != 0 {
		t.Fatalf("the endpoint got %d requests, the redirect's target %d; want 2 and 0", endpointRequests.Load(), elsewhereRequests.Load())
	}

	// A linked account whose token endpoint starts redirecting: the
	// egress proxy's new token request (after the API rejects the token)
	// fails, the account needs attention, and GetToken does not ask again.
	redirect.Store(false)
	if _, err := b.accounts.CreateAccount(ctx, oauth2); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "moved", svcPrincipal)
	redirect.Store(true)
	before := endpointRequests.Load()
	resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/moved/proxy/things", b.keys.svc, nil, nil)
	wantProxyError(t, resp, body, http.StatusBadRequest, "FAILED_PRECONDITION")
	if !strings.Contains(body, "PROVIDER_REDIRECTED") {
		t.Errorf("the proxy's answer does not name PROVIDER_REDIRECTED: %s", body)
	}
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/moved"})
	wantRedirected("GetToken", err)
	if got := endpointRequests.Load() - before; got != 1 || elsewhereRequests.Load() != 0 {
		t.Fatalf("the endpoint got %d new requests, the redirect's target %d; want 1 and 0", got, elsewhereRequests.Load())
	}
	a := b.account(t, "moved")
	if a.GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION ||
		a.GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_PROVIDER_REDIRECTED ||
		a.GetLastError().GetReason() != credbrokerv1.ErrorReason_PROVIDER_REDIRECTED {
		t.Fatalf("account after a redirect: state %v, reason %v, last_error %v", a.GetState(), a.GetStateReason(), a.GetLastError())
	}
}
