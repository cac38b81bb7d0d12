package server_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/devpki"
)

// hubClient is a browser-like client of a broker's Hub that follows no
// redirect, so that the test sees each answer.
type hubClient struct {
	t      *testing.T
	base   string
	cookie *http.Cookie
	// pages are the bodies of every answer, for the canary scan.
	pages []string
	// tls, if set, is how it connects to a Hub that serves TLS.
	tls *tls.Config
}

func (h *hubClient) do(method, path string, form url.Values, header map[string]string) (*http.Response, string) {
	h.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, h.base+path, body)
	if err != nil {
		h.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if host := req.Header.Get("Host"); host != "" {
		req.Host = host
	}
	if h.cookie != nil {
		req.AddCookie(h.cookie)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if h.tls != nil {
		client.Transport = &http.Transport{TLSClientConfig: h.tls}
	}
	resp, err := client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatal(err)
	}
	h.pages = append(h.pages, string(b))
	for k, v := range resp.Header {
		h.pages = append(h.pages, k+": "+strings.Join(v, ", "))
	}
	return resp, string(b)
}

// signIn signs in with key and keeps the session cookie.
func (h *hubClient) signIn(key string) (*http.Response, string) {
	h.t.Helper()
	return h.signInWith(url.Values{"caller_key": {key}})
}

// signInWith sends the sign-in form and keeps the session cookie.
func (h *hubClient) signInWith(form url.Values) (*http.Response, string) {
	h.t.Helper()
	resp, body := h.do("POST", "/signin", form, nil)
	for _, c := range resp.Cookies() {
		if strings.HasSuffix(c.Name, "credbroker_hub") && c.Value != "" {
			h.cookie = c
		}
	}
	return resp, body
}

// noCanaries fails the test if a page the client got or the broker's log
// holds a canary; or if that is too little to prove it: fewer than
// minPages pages, or none that holds mustHold.
func (h *hubClient) noCanaries(logs string, minPages int, mustHold string, canaries map[string]string) {
	h.t.Helper()
	all := strings.Join(h.pages, "\n") + logs
	if len(h.pages) < minPages || !strings.Contains(all, mustHold) {
		h.t.Fatalf("the canary scan has too little to scan: %d pages", len(h.pages))
	}
	for name, canary := range canaries {
		if strings.Contains(all, canary) {
			h.t.Errorf("a Hub page or the log holds the %s", name)
		}
	}
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)

// The Hub's sign-in: a wrong or non-admin key is refused next to the
// field and gets no session; an admin key gets an HttpOnly, SameSite=Strict
// session cookie that shows the Accounts page (the linked account, its
// kind and state in words); every page is sent with a strict CSP and may
// not be framed; forms without the session's token or from another site
// are refused; signing out ends the session, and so does revoking the key;
// sign-in, pages and sign-out are in the audit trail under the signed-in
// principal; no page holds a secret, a key or a token.
func TestHubSignInAndAccounts(t *testing.T) {
	ctx := context.Background()
	b := startBroker(t)
	b.link(t, "acme")
	token := b.token(t, "acme").GetAccessToken()
	h := &hubClient{t: t, base: b.hubURL}

	resp, body := h.do("GET", "/signin", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `type="password"`) || !strings.Contains(body, `autocomplete="off"`) {
		t.Fatalf("sign-in page: %d\n%s", resp.StatusCode, body)
	}
	for header, want := range map[string]string{
		"Content-Security-Policy": "default-src 'none'", "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
		"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
	} {
		if !strings.Contains(resp.Header.Get(header), want) {
			t.Errorf("%s: %q, want %q", header, resp.Header.Get(header), want)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "frame-ancestors 'none'") {
		t.Error("the CSP lets pages be framed")
	}

	const wrongKey = "cbk_wrong-key-canary-0123456789abcdef0123456789"
	resp, body = h.signIn(wrongKey)
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, `class="field-error"`) || h.cookie != nil {
		t.Fatalf("sign-in with a wrong key: %d, cookie %v\n%s", resp.StatusCode, h.cookie, body)
	}
	resp, body = h.signIn(b.keys.svc)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "needs the admin role") || h.cookie != nil {
		t.Fatalf("sign-in with a caller's key: %d\n%s", resp.StatusCode, body)
	}
	resp, _ = h.do("GET", "/accounts", nil, nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin" {
		t.Fatalf("accounts without signing in: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}

	resp, _ = h.signIn(b.keys.admin)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/accounts" || h.cookie == nil {
		t.Fatalf("sign-in with the admin key: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if !h.cookie.HttpOnly || h.cookie.SameSite != http.SameSiteStrictMode || h.cookie.Path != "/" {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/", h.cookie)
	}
	resp, body = h.do("GET", "/accounts", nil, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "acme") || !strings.Contains(body, "JumpCloud service account") ||
		!strings.Contains(body, "Active") || !strings.Contains(body, "callerKeys/bootstrap-admin") {
		t.Fatalf("accounts page: %d\n%s", resp.StatusCode, body)
	}
	m := csrfField.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("the page's sign-out form carries no token")
	}
	if resp, body = h.do("GET", "/accounts?state=needs_attention", nil, nil); !strings.Contains(body, "No accounts in this state") {
		t.Fatalf("accounts needing attention: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ = h.do("GET", "/accounts?state=bogus", nil, nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("an unknown state filter: %d", resp.StatusCode)
	}

	if resp, _ = h.do("POST", "/signout", url.Values{}, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out without the session's token: %d", resp.StatusCode)
	}
	if resp, _ = h.do("POST", "/signout", url.Values{"csrf": {m[1]}}, map[string]string{"Sec-Fetch-Site": "cross-site"}); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("sign-out from another site: %d", resp.StatusCode)
	}
	if resp, _ = h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the refused forms ended the session: %d", resp.StatusCode)
	}
	resp, _ = h.do("POST", "/signout", url.Values{"csrf": {m[1]}}, map[string]string{"Origin": b.hubURL})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin" {
		t.Fatalf("sign-out: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, _ = h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the session's cookie after sign-out: %d", resp.StatusCode)
	}

	// A session ends when its key is revoked.
	created, err := b.callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{
		KeyId: "hub-admin", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_ADMIN},
	})
	if err != nil {
		t.Fatal(err)
	}
	h.cookie = nil
	if resp, _ = h.signIn(created.GetKey()); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in with a new admin key: %d", resp.StatusCode)
	}
	if _, err := b.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/hub-admin"}); err != nil {
		t.Fatal(err)
	}
	if resp, body = h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(body, "revoked") {
		t.Fatalf("a session of a revoked key: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ = h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the session of a revoked key lives on: %d", resp.StatusCode)
	}

	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{PageSize: 200})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, ev := range events.GetEvents() {
		if strings.HasPrefix(ev.GetMethod(), "hub: ") {
			seen[ev.GetMethod()+" by "+ev.GetPrincipal()+" "+ev.GetCode()] = true
		}
	}
	for _, want := range []string{
		"hub: sign in by callerKeys/bootstrap-admin OK", "hub: accounts by callerKeys/bootstrap-admin OK",
		"hub: sign out by callerKeys/bootstrap-admin OK", "hub: sign in by callerKeys/svc PERMISSION_DENIED",
		"hub: accounts by callerKeys/hub-admin UNAUTHENTICATED",
	} {
		if !seen[want] {
			t.Errorf("no audit event %q; have %v", want, seen)
		}
	}

	h.noCanaries(b.logs.String(), 10, "acme", map[string]string{
		"client secret": clientSecret, "admin key": b.keys.admin, "caller key": b.keys.svc, "new admin key": created.GetKey(),
		"wrong key": wrongKey, "access token": token,
	})
}

// A Hub session ends at its expiry.
func TestHubSessionExpires(t *testing.T) {
	cfg, fake, logs := newConfig(t)
	cfg.Hub.SessionTTL = time.Second
	b := startWith(t, cfg, fake, logs)
	h := &hubClient{t: t, base: b.hubURL}
	if resp, _ := h.signIn(b.keys.admin); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	if resp, _ := h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("accounts: %d", resp.StatusCode)
	}
	time.Sleep(1100 * time.Millisecond)
	if resp, _ := h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/signin" {
		t.Fatalf("accounts after the session expired: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// The Hub refuses what a browser on another site, another name for the
// host or a careless form could send: a name other than a loopback one
// (DNS rebinding), files outside its stylesheet, an empty or oversized
// form, a session length out of bounds; signing in again ends the earlier
// session.
func TestHubRefusesTricks(t *testing.T) {
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	if resp, _ := h.do("GET", "/signin", nil, map[string]string{"Host": "evil.example:50054"}); resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("a page under another host name: %d", resp.StatusCode)
	}
	req, err := http.NewRequest("GET", b.hubURL+"/static/%2e%2e/templates/layout.html", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("a template through the static path: %d", resp.StatusCode)
	}
	if resp, _ := h.do("GET", "/static/hub.css", nil, nil); resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/css") {
		t.Fatalf("the stylesheet: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if resp, body := h.signIn(""); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "starts with cbk_") {
		t.Fatalf("sign-in with no key: %d\n%s", resp.StatusCode, body)
	}
	if resp, _ := h.do("POST", "/signin", url.Values{"caller_key": {strings.Repeat("x", 20<<10)}}, nil); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("an oversized form: %d", resp.StatusCode)
	}

	h.signIn(b.keys.admin)
	first := h.cookie
	if resp, _ := h.signIn(b.keys.admin); resp.StatusCode != http.StatusSeeOther || h.cookie.Value == first.Value {
		t.Fatalf("signing in again: %d", resp.StatusCode)
	}
	second := h.cookie
	h.cookie = first
	if resp, _ := h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the earlier session after signing in again: %d", resp.StatusCode)
	}
	h.cookie = second
	if resp, _ := h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("the new session: %d", resp.StatusCode)
	}

	for _, ttl := range []time.Duration{-time.Second, 8 * 24 * time.Hour} {
		cfg := b.cfg
		cfg.DataDir = t.TempDir()
		cfg.Hub.SessionTTL = ttl
		if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "--hub-session-ttl") {
			t.Fatalf("--hub-session-ttl %s: %v", ttl, err)
		}
	}
}

// While a replica cannot reach etcd, its Hub pages say so at once and keep
// the admin signed in; when etcd is back, the same session goes on.
func TestHubWhileStorageIsDown(t *testing.T) {
	rs, cluster := startReplicas(t, 1, 1, nil)
	b := rs[0]
	h := &hubClient{t: t, base: b.hubURL}
	if resp, _ := h.signIn(b.keys.admin); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("sign-in: %d", resp.StatusCode)
	}
	cluster.Stop(0)
	waitFor(t, 10*time.Second, func() error {
		resp, body := h.do("GET", "/accounts", nil, nil)
		if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "storage") {
			return nil
		}
		return fmt.Errorf("accounts with etcd down: %d", resp.StatusCode)
	})
	resp, _ := h.do("GET", "/accounts", nil, nil)
	for _, c := range resp.Cookies() {
		if c.Name == "credbroker_hub" {
			t.Fatal("the page with etcd down ended the session")
		}
	}
	cluster.Restart(0)
	waitFor(t, 20*time.Second, func() error {
		if resp, _ := h.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusOK {
			return fmt.Errorf("accounts with etcd back: %d", resp.StatusCode)
		}
		return nil
	})
}

// Linking a JumpCloud service account from the Hub: a wrong secret is
// shown next to the Client Secret field and nothing is kept; a malformed
// organization ID next to its field, before JumpCloud is asked; the form
// never sends the secret back; a right one links the account (proved
// first, as CreateAccount does), shows the confirmation, lists it, and its
// token is served; the form needs the session's token; the link is audited
// under the signed-in admin.
func TestHubLinksAnAccount(t *testing.T) {
	ctx := context.Background()
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	_, body := h.do("GET", "/accounts/new", nil, nil)
	m := csrfField.FindStringSubmatch(body)
	if m == nil || !strings.Contains(body, `name="client_secret" type="password" autocomplete="off"`) {
		t.Fatalf("the link form:\n%s", body)
	}
	form := func(secret, orgID string) url.Values {
		return url.Values{"csrf": {m[1]}, "kind": {"jumpcloud"}, "account_id": {"globex"}, "display_name": {"Globex"}, "client_id": {clientID},
			"client_secret": {secret}, "region": {"us"}, "org_id": {orgID}}
	}
	const wrongSecret = "wrong-secret-canary-5d1f"
	requests := b.fake.Requests()
	resp, body := h.do("POST", "/accounts/new", form(wrongSecret, ""), nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="client_secret_error"`) || !strings.Contains(body, `value="Globex"`) {
		t.Fatalf("linking with a wrong secret: %d\n%s", resp.StatusCode, body)
	}
	resp, body = h.do("POST", "/accounts/new", form(clientSecret, "not-an-org-id"), nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="org_id_error"`) || strings.Contains(body, `id="client_secret_error"`) {
		t.Fatalf("linking with a malformed organization ID: %d\n%s", resp.StatusCode, body)
	}
	if got := b.fake.Requests() - requests; got != 1 {
		t.Fatalf("%d token requests for a wrong secret and a malformed organization ID; want 1, for the secret", got)
	}
	if _, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/globex"}); err == nil {
		t.Fatal("a refused link kept the account")
	}
	noToken := form(clientSecret, "")
	noToken.Del("csrf")
	if resp, _ = h.do("POST", "/accounts/new", noToken, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("linking without the session's token: %d", resp.StatusCode)
	}

	resp, _ = h.do("POST", "/accounts/new", form(clientSecret, ""), nil)
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/accounts/globex?done=linked" {
		t.Fatalf("linking: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body = h.do("GET", "/accounts/globex?done=linked", nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, `id="notice"`) || !strings.Contains(body, "JumpCloud service account") {
		t.Fatalf("the confirmation: %d\n%s", resp.StatusCode, body)
	}
	if _, body = h.do("GET", "/accounts", nil, nil); !strings.Contains(body, "globex") {
		t.Fatalf("the accounts page after linking:\n%s", body)
	}
	resp, body = h.do("POST", "/accounts/new", form(clientSecret, ""), nil)
	if resp.StatusCode != http.StatusConflict || !strings.Contains(body, `id="account_id_error"`) {
		t.Fatalf("linking the same id again: %d\n%s", resp.StatusCode, body)
	}
	b.grant(t, "globex", svcPrincipal)
	if b.token(t, "globex").GetAccessToken() == "" {
		t.Fatal("no token for the account linked from the Hub")
	}
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Account: "accounts/globex", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	linked := false
	for _, ev := range events.GetEvents() {
		linked = linked || (ev.GetMethod() == "hub: link an account" && ev.GetPrincipal() == "callerKeys/bootstrap-admin" && ev.GetCode() == "OK")
	}
	if !linked {
		t.Fatalf("the link is not audited: %v", events.GetEvents())
	}
	h.noCanaries(b.logs.String(), 8, "globex", map[string]string{"client secret": clientSecret, "wrong secret": wrongSecret})
}

// The Hub's account pages take only account ids, so that nothing else
// reaches the audit trail through their URLs; an unknown region is
// refused next to its field.
func TestHubLinkFormChecksItsInput(t *testing.T) {
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	if resp, _ := h.do("GET", "/accounts/%1b%5b31mred%0a", nil, nil); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("the page of a non-id: %d", resp.StatusCode)
	}
	if resp, _ := h.do("GET", "/accounts/nosuch", nil, nil); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("the page of an unknown account: %d", resp.StatusCode)
	}
	_, body := h.do("GET", "/accounts/new", nil, nil)
	m := csrfField.FindStringSubmatch(body)
	resp, body := h.do("POST", "/accounts/new", url.Values{"csrf": {m[1]}, "kind": {"jumpcloud"}, "client_id": {clientID}, "client_secret": {clientSecret}, "region": {"mars"}}, nil)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, `id="region_error"`) {
		t.Fatalf("an unknown region: %d\n%s", resp.StatusCode, body)
	}
	events, err := b.audit.ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(events.GetEvents()) == 0 {
		t.Fatal("no audit event to check")
	}
	for _, ev := range events.GetEvents() {
		if strings.ContainsAny(ev.GetResource(), "\x1b\n") {
			t.Fatalf("a control character reached the audit trail: %q", ev.GetResource())
		}
	}
}

// An admin whose client certificate's principal is an admin signs in to
// the Hub with it (served over TLS, the cookie __Host- and Secure); a
// certificate of a principal that is not admin is refused; the session
// ends when the principal stops being admin.
func TestHubSignInWithCertificate(t *testing.T) {
	ctx := context.Background()
	cfg, fake, logs := newConfig(t)
	ca := withTLS(t, &cfg)
	b := startWith(t, cfg, fake, logs)
	if _, err := b.callers.AddAdminPrincipal(ctx, &credbrokerv1.AddAdminPrincipalRequest{Principal: "spiffe://test/ops"}); err != nil {
		t.Fatal(err)
	}
	client := func(principal string) *hubClient {
		cert := clientCert(t, ca, devpki.Identity{URIs: []string{principal}})
		return &hubClient{t: t, base: b.hubURL, tls: &tls.Config{RootCAs: b.roots, Certificates: []tls.Certificate{*cert}}}
	}
	ops := client("spiffe://test/ops")
	if _, body := ops.do("GET", "/signin", nil, nil); !strings.Contains(body, `id="certificate"`) {
		t.Fatalf("the sign-in page offers no certificate sign-in:\n%s", body)
	}
	resp, body := ops.signInWith(url.Values{"with": {"certificate"}})
	if resp.StatusCode != http.StatusSeeOther || ops.cookie == nil || ops.cookie.Name != "__Host-credbroker_hub" || !ops.cookie.Secure {
		t.Fatalf("signing in with an admin's certificate: %d %+v\n%s", resp.StatusCode, ops.cookie, body)
	}
	if resp, body := ops.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, "spiffe://test/ops") {
		t.Fatalf("the Accounts page signed in with a certificate: %d\n%s", resp.StatusCode, body)
	}
	billing := client("spiffe://test/billing")
	if resp, body := billing.signInWith(url.Values{"with": {"certificate"}}); resp.StatusCode != http.StatusForbidden || billing.cookie != nil {
		t.Fatalf("signing in with a caller's certificate: %d\n%s", resp.StatusCode, body)
	}
	if _, err := b.callers.RemoveAdminPrincipal(ctx, &credbrokerv1.RemoveAdminPrincipalRequest{Principal: "spiffe://test/ops"}); err != nil {
		t.Fatal(err)
	}
	if resp, _ := ops.do("GET", "/accounts", nil, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a session whose principal is no longer admin: %d", resp.StatusCode)
	}
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Principal: "spiffe://test/ops", PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	signedIn := false
	for _, ev := range events.GetEvents() {
		signedIn = signedIn || (ev.GetMethod() == "hub: sign in" && ev.GetCode() == "OK")
	}
	if !signedIn {
		t.Fatalf("no audit event of the certificate sign-in: %v", events.GetEvents())
	}
}
