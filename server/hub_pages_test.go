package server_test

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// form is the session's form token, read from a page of the Hub.
func (h *hubClient) form(path string, values url.Values) url.Values {
	h.t.Helper()
	resp, body := h.do("GET", path, nil, nil)
	m := csrfField.FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		h.t.Fatalf("%s: %d, no form token\n%s", path, resp.StatusCode, body)
	}
	values.Set("csrf", m[1])
	return values
}

// post sends a form of the page at from to path and checks the answer's
// status (and, for a redirect, where to); it returns the page.
func (h *hubClient) post(from, path string, values url.Values, code int, location string) string {
	h.t.Helper()
	resp, body := h.do("POST", path, h.form(from, values), nil)
	if resp.StatusCode != code || resp.Header.Get("Location") != location {
		h.t.Fatalf("POST %s: %d %q, want %d %q\n%s", path, resp.StatusCode, resp.Header.Get("Location"), code, location, body)
	}
	return body
}

// fieldError is the error a page shows next to a form field, or "".
func fieldError(body, field string) string {
	m := regexp.MustCompile(`id="` + field + `_error">([^<]*)<`).FindStringSubmatch(body)
	if m == nil {
		return ""
	}
	return m[1]
}

// The Hub links a JumpCloud API key and generic OAuth 2.0 client
// credentials, each from its own form, proved first: a wrong key or secret
// is shown next to its field, a malformed token URL or extra field next to
// its own, a field the form lacks over the form; the right ones link.
func TestHubLinksEachKind(t *testing.T) {
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	b.fake.SetAPIKey(apiKey, orgID)
	const wrongKey = "wrong-API-KEY-canary-31f0"

	for kind, title := range map[string]string{"jumpcloud": "service account", "jumpcloud-api-key": "API key", "oauth2": "OAuth 2.0"} {
		if _, body := h.do("GET", "/accounts/new?kind="+kind, nil, nil); !strings.Contains(body, "<h1>Link") || !strings.Contains(body, title) {
			t.Fatalf("the %s form:\n%s", kind, body)
		}
	}
	apiKeyForm := func(key string) url.Values {
		return url.Values{"kind": {"jumpcloud-api-key"}, "account_id": {"legacy"}, "api_key": {key}, "region": {"us"}, "org_id": {orgID}}
	}
	body := h.post("/accounts/new?kind=jumpcloud-api-key", "/accounts/new", apiKeyForm(wrongKey), http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "api_key"), "JumpCloud rejected this API key") {
		t.Fatalf("a wrong API key:\n%s", body)
	}
	h.post("/accounts/new?kind=jumpcloud-api-key", "/accounts/new", apiKeyForm(apiKey), http.StatusSeeOther, "/accounts/legacy?done=linked")
	if _, body = h.do("GET", "/accounts/legacy", nil, nil); !strings.Contains(body, "JumpCloud API key") || !strings.Contains(body, orgID) {
		t.Fatalf("the API key's page:\n%s", body)
	}

	tokenURL := b.cfg.Provider.JumpCloudTokenURLUS
	oauthForm := func(tokenURL, secret, params string) url.Values {
		return url.Values{"kind": {"oauth2"}, "account_id": {"generic"}, "token_url": {tokenURL}, "client_id": {clientID}, "client_secret": {secret},
			"scopes": {"api"}, "auth_style": {"header"}, "endpoint_params": {params}, "api_base_url": {"http://127.0.0.1:9/api"}}
	}
	body = h.post("/accounts/new?kind=oauth2", "/accounts/new", oauthForm("ftp://idp.example/token", clientSecret, ""), http.StatusBadRequest, "")
	if fieldError(body, "token_url") == "" || strings.Contains(body, `value="`+clientSecret) {
		t.Fatalf("a malformed token URL:\n%s", body)
	}
	body = h.post("/accounts/new?kind=oauth2", "/accounts/new", oauthForm(tokenURL, clientSecret, "audience"), http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "endpoint_params"), "name=value") {
		t.Fatalf("a malformed extra field:\n%s", body)
	}
	body = h.post("/accounts/new?kind=oauth2", "/accounts/new", oauthForm(tokenURL, clientSecret, "grant_type=password"), http.StatusBadRequest, "")
	if fieldError(body, "endpoint_params") == "" {
		t.Fatalf("a reserved extra field:\n%s", body)
	}
	body = h.post("/accounts/new?kind=oauth2", "/accounts/new", oauthForm(tokenURL, "wrong-"+clientSecret, ""), http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "client_secret"), "rejected") {
		t.Fatalf("a wrong client secret:\n%s", body)
	}
	h.post("/accounts/new?kind=oauth2", "/accounts/new", oauthForm(tokenURL, clientSecret, "audience=https://api.example"), http.StatusSeeOther, "/accounts/generic?done=linked")
	got, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/generic"})
	if err != nil || got.GetAccount().GetEndpointParams()["audience"] != "https://api.example" || got.GetAccount().GetScopes()[0] != "api" {
		t.Fatalf("the generic account as linked: %v %v", got, err)
	}
	body = h.post("/accounts/new", "/accounts/new", url.Values{"kind": {"jumpcloud"}, "client_id": {clientID}, "client_secret": {clientSecret}, "region": {"in"}}, http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "region"), "--jumpcloud-token-url-in") {
		t.Fatalf("an India service account on a broker without India's token endpoint:\n%s", body)
	}
	body = h.post("/accounts/new", "/accounts/new", url.Values{"kind": {"nonsense"}}, http.StatusBadRequest, "")
	if !strings.Contains(body, "Choose the kind") {
		t.Fatalf("an unknown kind:\n%s", body)
	}

	h.noCanaries(b.logs.String(), 20, "generic", map[string]string{"client secret": clientSecret, "API key": apiKey, "wrong key": wrongKey})
}

// An account's page in the Hub: its state and secrets (described, never
// shown); a secret added for rotation only once JumpCloud accepts it, a
// rejected or malformed one shown next to its field; a secret removed;
// grants added (a malformed principal or unknown caller key next to the
// field) and removed, and the grant works for GetToken at once; the
// account's recent audit events, with the signed-in admin's changes;
// deletion only once the account's id is typed again.
func TestHubLooksAfterAnAccount(t *testing.T) {
	ctx := context.Background()
	b := startBroker(t)
	b.link(t, "acme")
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	const newSecret = "canary-NEW-SECRET-77a0c1"
	b.fake.AddClientSecret(clientID, newSecret)

	resp, body := h.do("GET", "/accounts/acme", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "JumpCloud service account") || !strings.Contains(body, "sha256:") || !strings.Contains(body, `id="add-secret"`) {
		t.Fatalf("the account's page: %d\n%s", resp.StatusCode, body)
	}
	page := "/accounts/acme"
	body = h.post(page, page+"/secrets", url.Values{"secret": {"wrong-" + newSecret}}, http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "secret"), "rejected this secret") {
		t.Fatalf("a rejected secret:\n%s", body)
	}
	body = h.post(page, page+"/secrets", url.Values{"secret": {newSecret}, "expires": {"2001-01-01"}}, http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "expires"), "future") {
		t.Fatalf("a past expiry:\n%s", body)
	}
	h.post(page, page+"/secrets", url.Values{"secret": {newSecret}, "expires": {"2099-01-01"}}, http.StatusSeeOther, page+"?done=secret-added")
	got, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/acme"})
	if err != nil || len(got.GetAccount().GetSecrets()) != 2 {
		t.Fatalf("the account after adding a secret: %v %v", got, err)
	}
	oldID := got.GetAccount().GetSecrets()[1].GetSecretId()
	if _, body = h.do("GET", page+"?done=secret-added", nil, nil); !strings.Contains(body, "2099-01-01") || strings.Contains(body, `id="add-secret"`) {
		t.Fatalf("the page with two secrets:\n%s", body)
	}
	h.post(page, page+"/secrets/remove", url.Values{"secret_id": {oldID}}, http.StatusSeeOther, page+"?done=secret-removed")
	body = h.post(page, page+"/secrets/remove", url.Values{"secret_id": {got.GetAccount().GetSecrets()[0].GetSecretId()}}, http.StatusBadRequest, "")
	if !strings.Contains(body, "The secret was not removed") {
		t.Fatalf("removing the last secret:\n%s", body)
	}

	body = h.post(page, page+"/grants", url.Values{"principal": {"not a principal"}}, http.StatusBadRequest, "")
	if fieldError(body, "principal") == "" || !strings.Contains(body, `value="not a principal"`) {
		t.Fatalf("a malformed principal:\n%s", body)
	}
	body = h.post(page, page+"/grants", url.Values{"principal": {"callerKeys/nosuch"}}, http.StatusNotFound, "")
	if !strings.Contains(fieldError(body, "principal"), "caller key not found") {
		t.Fatalf("an unknown caller key:\n%s", body)
	}
	body = h.post(page, page+"/grants", url.Values{"principal": {svcPrincipal}, "http_methods": {"get, FETCH"}}, http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "http_methods"), "FETCH") {
		t.Fatalf("an unknown method:\n%s", body)
	}
	h.post(page, page+"/grants", url.Values{"principal": {svcPrincipal}}, http.StatusSeeOther, page+"?done=grant-added")
	if b.token(t, "acme").GetAccessToken() == "" {
		t.Fatal("no token after the grant")
	}
	h.post(page, page+"/grants/remove", url.Values{"principal": {svcPrincipal}}, http.StatusSeeOther, page+"?done=grant-removed")
	if _, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err == nil {
		t.Fatal("a token after the grant was removed")
	}

	_, body = h.do("GET", page, nil, nil)
	for _, method := range []string{"hub: add a secret", "hub: remove a secret", "hub: add a grant", "hub: remove a grant"} {
		if !strings.Contains(body, method) {
			t.Errorf("the account's recent events lack %q", method)
		}
	}

	body = h.post(page+"/delete", page+"/delete", url.Values{"confirm": {"acm"}}, http.StatusBadRequest, "")
	if !strings.Contains(fieldError(body, "confirm"), "to delete it") {
		t.Fatalf("a deletion not confirmed:\n%s", body)
	}
	h.post(page+"/delete", page+"/delete", url.Values{"confirm": {"acme"}}, http.StatusSeeOther, "/accounts?done=account-deleted")
	if resp, _ := h.do("GET", page, nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the deleted account's page: %d", resp.StatusCode)
	}

	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/acme", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	methods := map[string]int{}
	for _, ev := range events.GetEvents() {
		if ev.GetPrincipal() == "callerKeys/bootstrap-admin" && ev.GetCode() == "OK" {
			methods[ev.GetMethod()]++
		}
	}
	for _, m := range []string{"hub: account", "hub: add a secret", "hub: remove a secret", "hub: add a grant", "hub: remove a grant", "hub: delete an account"} {
		if methods[m] == 0 {
			t.Errorf("no audit event of %q on the account under the admin: %v", m, methods)
		}
	}
	h.noCanaries(b.logs.String(), 30, "sha256:", map[string]string{"client secret": clientSecret, "new secret": newSecret, "caller key": b.keys.svc, "admin key": b.keys.admin})
}

// The Callers page creates a caller key and shows it once, on the answer
// to the form (with a copy button), never in the list or a URL; revoking
// it refuses it at once. The Audit page lists events filtered by account,
// principal and time, and says what to fix in a filter.
func TestHubCallersAndAudit(t *testing.T) {
	ctx := context.Background()
	b := startBroker(t)
	b.link(t, "acme")
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)

	body := h.post("/callers", "/callers", url.Values{"key_id": {"Bad Id"}, "role": {"caller"}}, http.StatusBadRequest, "")
	if fieldError(body, "key_id") == "" {
		t.Fatalf("a malformed key id:\n%s", body)
	}
	body = h.post("/callers", "/callers", url.Values{"key_id": {"billing"}, "role": {"caller"}, "description": {"billing sync"}}, http.StatusOK, "")
	m := regexp.MustCompile(`id="new_key" value="(cbk_[A-Za-z0-9_-]+)"`).FindStringSubmatch(body)
	if m == nil || !strings.Contains(body, `data-copy="new_key"`) || !strings.Contains(body, `src="/static/copy.js"`) {
		t.Fatalf("the created key's page:\n%s", body)
	}
	key := m[1]
	if resp, _ := h.do("GET", "/static/copy.js", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the copy button's script: %d", resp.StatusCode)
	}
	body = h.post("/callers", "/callers", url.Values{"key_id": {"billing"}, "role": {"caller"}}, http.StatusConflict, "")
	if fieldError(body, "key_id") == "" {
		t.Fatalf("a key id taken:\n%s", body)
	}
	b.grant(t, "acme", "callerKeys/billing")
	billing := credbrokerv1.NewTokenServiceClient(b.dial(t, key, nil))
	if _, err := billing.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err != nil {
		t.Fatalf("GetToken with the key the Hub created: %v", err)
	}
	h.post("/callers", "/callers/billing/revoke", url.Values{}, http.StatusSeeOther, "/callers?done=key-revoked")
	if _, err := billing.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err == nil {
		t.Fatal("the revoked key still gets tokens")
	}
	if _, body = h.do("GET", "/callers", nil, nil); !strings.Contains(body, "revoked") || !strings.Contains(body, "billing sync") || !strings.Contains(body, `action="/callers/billing/delete"`) {
		t.Fatalf("the keys after revoking:\n%s", body)
	}
	// Deleted only once no account grants it; then its name is free.
	resp, body := h.do("POST", "/callers/billing/delete", h.form("/callers", url.Values{}), nil)
	if resp.StatusCode == http.StatusSeeOther || !strings.Contains(body, "accounts still grant callerKeys/billing") {
		t.Fatalf("deleting a granted key: %d\n%s", resp.StatusCode, body)
	}
	if _, err := b.accounts.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/billing"}); err != nil {
		t.Fatal(err)
	}
	h.post("/callers", "/callers/billing/delete", url.Values{}, http.StatusSeeOther, "/callers?done=key-deleted")
	if _, body = h.do("GET", "/callers?done=key-deleted", nil, nil); strings.Contains(body, "billing sync") || !strings.Contains(body, "its name may be given to a new key") {
		t.Fatalf("the keys after deleting:\n%s", body)
	}

	if _, body = h.do("GET", "/audit?account=acme", nil, nil); !strings.Contains(body, "CreateAccount") || strings.Contains(body, "hub: create a caller key") {
		t.Fatalf("the audit page of one account:\n%s", body)
	}
	if _, body = h.do("GET", "/audit?principal=callerKeys/bootstrap-admin&start=2000-01-01T00:00", nil, nil); !strings.Contains(body, "hub: create a caller key") || !strings.Contains(body, "callerKeys/billing") {
		t.Fatalf("the audit page of the admin:\n%s", body)
	}
	if _, body = h.do("GET", "/audit?end=2000-01-01T00:00", nil, nil); !strings.Contains(body, "No events") {
		t.Fatalf("the audit page before any event:\n%s", body)
	}
	resp, body = h.do("GET", "/audit?start=yesterday", nil, nil)
	if resp.StatusCode != http.StatusBadRequest || fieldError(body, "start") == "" {
		t.Fatalf("a malformed time: %d\n%s", resp.StatusCode, body)
	}
	resp, body = h.do("GET", "/audit?account=Not+An+Id", nil, nil)
	if resp.StatusCode != http.StatusBadRequest || fieldError(body, "account") == "" {
		t.Fatalf("a malformed account: %d\n%s", resp.StatusCode, body)
	}

	shown := 0
	for _, p := range h.pages {
		shown += strings.Count(p, key)
	}
	all := strings.Join(h.pages, "\n") + b.logs.String()
	if shown != 1 || len(h.pages) < 20 {
		t.Fatalf("the new key was shown %d times in %d pages; want once", shown, len(h.pages))
	}
	if strings.Count(b.logs.String(), key) != 0 || strings.Contains(all, b.keys.svc) || strings.Contains(all, b.keys.admin) {
		t.Error("a Hub page or the log holds a caller key")
	}
}

// The Accounts page says an account's state and its reason in words, and
// its state filter finds it.
func TestHubSaysWhyInWords(t *testing.T) {
	ctx := context.Background()
	b := startBroker(t)
	b.fake.SetTokenTTL(32 * time.Second) // served for 2 s: 30 s is JumpCloud's margin
	b.link(t, "acme")
	b.fake.SetBehaviour(jumpcloudfake.RejectAll)
	time.Sleep(2100 * time.Millisecond)
	_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_CREDENTIALS_REJECTED.String())
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	if _, body := h.do("GET", "/accounts?state=needs_attention", nil, nil); !strings.Contains(body, "Needs attention: JumpCloud rejected the client secret") {
		t.Fatalf("a rejected account on the Accounts page:\n%s", body)
	}
	if _, body := h.do("GET", "/accounts?state=active", nil, nil); strings.Contains(body, "acme") {
		t.Fatalf("the active accounts list a rejected one:\n%s", body)
	}
	// A new secret the provider accepts makes it active at once.
	const fixed = "canary-FIXED-SECRET-0d9e"
	b.fake.SetClient(clientID, fixed)
	b.fake.SetBehaviour(jumpcloudfake.Normal)
	h.post("/accounts/acme", "/accounts/acme/secrets", url.Values{"secret": {fixed}}, http.StatusSeeOther, "/accounts/acme?done=secret-added")
	if _, body := h.do("GET", "/accounts/acme", nil, nil); !strings.Contains(body, `<td id="state">Active</td>`) {
		t.Fatalf("the account once a new secret was added:\n%s", body)
	}
}
