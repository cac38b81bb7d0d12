package server_test

import (
	"context"
	"fmt"
	"html"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/oauthfake"
)

const (
	appID       = "example-app"
	appSecret   = "canary-APP-SECRET-9e41d2"
	appUser     = "ada"
	appPassword = "canary-USER-PASSWORD-51c0"
)

// provider is a fake OAuth 2.0 provider that signs users in by redirect.
type oauthProvider struct {
	*oauthfake.Fake
	url string
}

func startOAuthProvider(t *testing.T) oauthProvider {
	t.Helper()
	f := oauthfake.New(appID, appSecret, appUser, appPassword)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return oauthProvider{Fake: f, url: srv.URL}
}

// signInForm is the Hub's form for an authorization-code account at p.
func (p oauthProvider) signInForm(id string) url.Values {
	return url.Values{
		"kind": {"oauth2-code"}, "account_id": {id}, "authorization_url": {p.url + oauthfake.AuthorizePath}, "token_url": {p.url + oauthfake.TokenPath},
		"client_id": {appID}, "client_secret": {appSecret}, "scopes": {"read offline_access"}, "authorization_params": {"prompt=consent"},
		"api_base_url": {p.url + oauthfake.APIPath},
	}
}

// signIn plays the user at the provider's sign-in page that location (the
// Hub's link) leads to, and returns where the provider sends the browser
// back.
func (p oauthProvider) signIn(t *testing.T, location, decision string) string {
	t.Helper()
	if !strings.HasPrefix(location, p.url+oauthfake.AuthorizePath) {
		t.Fatalf("the Hub sent the browser to %q", location)
	}
	back, err := p.SignIn(location, decision == "deny")
	if err != nil {
		t.Fatal(err)
	}
	return back
}

// startSignIn sends the Hub's form for account id and returns where the
// browser is sent, and the cookie that binds the sign-in to it.
func (h *hubClient) startSignIn(p oauthProvider, form url.Values) (string, *http.Cookie) {
	h.t.Helper()
	resp, body := h.do("POST", "/accounts/new", h.form("/accounts/new?kind=oauth2-code", form), nil)
	return h.continueSignIn(resp, body)
}

// continueSignIn is where the page that starts a sign-in sends the
// browser, and the cookie that binds the sign-in to it.
func (h *hubClient) continueSignIn(resp *http.Response, body string) (string, *http.Cookie) {
	h.t.Helper()
	m := regexp.MustCompile(`id="continue" href="([^"]+)"`).FindStringSubmatch(body)
	if resp.StatusCode != http.StatusOK || m == nil {
		h.t.Fatalf("starting a sign-in: %d\n%s", resp.StatusCode, body)
	}
	for _, c := range resp.Cookies() {
		if strings.HasPrefix(c.Name, "credbroker_signin_") {
			return html.UnescapeString(m[1]), c
		}
	}
	h.t.Fatal("no sign-in cookie")
	return "", nil
}

// callback brings the browser back to the Hub from the provider, with the
// sign-in cookie if given.
func (h *hubClient) callback(location string, cookie *http.Cookie) (*http.Response, string) {
	h.t.Helper()
	path := strings.TrimPrefix(location, h.base)
	if path == location {
		h.t.Fatalf("the provider sent the browser to %q, not to the Hub", location)
	}
	header := map[string]string{}
	if cookie != nil {
		header["Cookie"] = cookie.Name + "=" + cookie.Value
	}
	resp, body := h.do("GET", path, nil, header)
	if next := resp.Header.Get("Location"); resp.StatusCode == http.StatusSeeOther && strings.HasPrefix(next, "/signed-in?") {
		if strings.Contains(next, "code=") || strings.Contains(next, "state=") {
			h.t.Fatalf("the callback sends the browser on to %s", next)
		}
		return h.do("GET", next, nil, nil)
	}
	return resp, body
}

// linkByRedirect links account id at p through the Hub, as an admin.
func linkByRedirect(t *testing.T, b *broker, h *hubClient, p oauthProvider, id string) {
	t.Helper()
	location, cookie := h.startSignIn(p, p.signInForm(id))
	if resp, body := h.callback(p.signIn(t, location, "allow"), cookie); resp.StatusCode != http.StatusOK || !strings.Contains(body, "is linked") {
		t.Fatalf("the callback: %d\n%s", resp.StatusCode, body)
	}
}

// Linking an account whose users sign in by redirect: the Hub checks the
// settings first (a problem next to its field), sends the browser to the
// provider with a state and an S256 PKCE challenge, and on the way back
// links the account only for the browser that started, once; a denial,
// an unknown state and a replayed callback end on a page that says so and
// store nothing. The account's token is then served like any other.
func TestSignInByRedirect(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)

	if _, body := h.do("GET", "/accounts/new?kind=oauth2-code", nil, nil); !strings.Contains(body, b.hubURL+"/oauth2/callback") {
		t.Fatalf("the form does not give the redirect URI:\n%s", body)
	}
	bad := p.signInForm("example")
	bad.Set("authorization_url", "ftp://example.com/authorize")
	bad.Set("authorization_params", "state=mine")
	body := h.post("/accounts/new?kind=oauth2-code", "/accounts/new", bad, http.StatusBadRequest, "")
	if fieldError(body, "authorization_url") == "" || strings.Contains(body, appSecret) {
		t.Fatalf("a malformed authorization URL:\n%s", body)
	}
	bad.Set("authorization_url", p.url+oauthfake.AuthorizePath)
	if body = h.post("/accounts/new?kind=oauth2-code", "/accounts/new", bad, http.StatusBadRequest, ""); !strings.Contains(fieldError(body, "authorization_params"), "set by the broker") {
		t.Fatalf("a reserved sign-in parameter:\n%s", body)
	}

	location, cookie := h.startSignIn(p, p.signInForm("example"))
	q, _ := url.Parse(location)
	if q.Query().Get("code_challenge_method") != "S256" || q.Query().Get("code_challenge") == "" || q.Query().Get("state") == "" ||
		q.Query().Get("redirect_uri") != b.hubURL+"/oauth2/callback" || q.Query().Get("prompt") != "consent" {
		t.Fatalf("the sign-in redirect: %s", location)
	}
	if cookie.SameSite != http.SameSiteLaxMode || !cookie.HttpOnly {
		t.Fatalf("the sign-in cookie: %+v", cookie)
	}
	back := p.signIn(t, location, "allow")
	if resp, body := h.callback(back, nil); resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "another browser") {
		t.Fatalf("the callback without the browser's cookie: %d\n%s", resp.StatusCode, body)
	}
	if resp, body := h.callback(back, cookie); resp.StatusCode != http.StatusOK || !strings.Contains(body, "is linked") {
		t.Fatalf("the callback: %d\n%s", resp.StatusCode, body)
	}
	if resp, body := h.callback(back, cookie); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "finished already") {
		t.Fatalf("a replayed callback: %d\n%s", resp.StatusCode, body)
	}
	got, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/example"})
	if err != nil || got.GetAccount().GetProvider() != credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE || got.GetAccount().GetAuthorizationUrl() != p.url+oauthfake.AuthorizePath {
		t.Fatalf("the account linked by sign-in: %v %v", got, err)
	}
	b.grant(t, "example", svcPrincipal)
	if tok := b.token(t, "example"); !strings.HasPrefix(tok.GetAccessToken(), "fake-access-") || tok.GetApiBaseUrl() != p.url+oauthfake.APIPath {
		t.Fatalf("the token of the account linked by sign-in: %v", tok)
	}
	if resp, body := b.proxyCall(t, "GET", "/v1/accounts/example/proxy/me", b.keys.svc, nil, nil); resp.StatusCode != http.StatusOK || !strings.Contains(body, `"ok":true`) {
		t.Fatalf("a call through the egress proxy: %d %s", resp.StatusCode, body)
	}
	_, err = b.accounts.AddAccountSecret(ctx, &credbrokerv1.AddAccountSecretRequest{Name: "accounts/example", Secret: "another-app-secret"})
	wantCode(t, err, codes.FailedPrecondition, "")

	location, cookie = h.startSignIn(p, p.signInForm("denied"))
	if resp, body := h.callback(p.signIn(t, location, "deny"), cookie); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "access_denied") {
		t.Fatalf("a denied sign-in: %d\n%s", resp.StatusCode, body)
	}
	if resp, body := h.do("GET", "/oauth2/callback?state=bogus&code=x", nil, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "unknown") {
		t.Fatalf("an unknown state: %d\n%s", resp.StatusCode, body)
	}
	if _, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/denied"}); err == nil {
		t.Fatal("a denied sign-in linked its account")
	}
	canaries := map[string]string{"client secret": appSecret, "user's password": appPassword, "admin key": b.keys.admin}
	for i, rt := range p.RefreshTokens() {
		canaries["refresh token "+string(rune('a'+i))] = rt
	}
	h.noCanaries(b.logs.String(), 10, "example", canaries)
}

// Refreshing an account whose users sign in by redirect: 200 callers of an
// expired token make one refresh; the rotated refresh token is the one
// used next (the provider revokes a reused one, so every later refresh
// proves it); an answer without a refresh token keeps the stored one; a
// revoked refresh token makes the account NEEDS_ATTENTION with reason
// REFRESH_TOKEN_REVOKED after one request, not a retry loop; Reconnect
// gives it new tokens and keeps its grants.
func TestRefreshTokens(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	p.SetTokenTTL(12*time.Second, false) // served for 2 s: 10 s is the margin
	p.SetRotation(true, 0)               // a rotated token used again revokes the family
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.ScanInterval = time.Hour // callers, not the refresher, find the tokens expired
	b := startWith(t, cfg, fake, logs)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	linkByRedirect(t, b, h, p, "example")
	b.grant(t, "example", svcPrincipal)

	expireAndGet := func(callers int) {
		t.Helper()
		time.Sleep(2100 * time.Millisecond)
		var wg sync.WaitGroup
		errs := make(chan error, callers)
		for range callers {
			wg.Go(func() {
				_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("GetToken: %v", err)
			}
		}
	}
	before := p.Refreshes()
	expireAndGet(200)
	if n := p.Refreshes() - before; n != 1 {
		t.Fatalf("%d refreshes for 200 callers of an expired token; want 1", n)
	}
	expireAndGet(1) // with the rotated refresh token, or the provider would revoke them all
	p.OmitRefreshToken(true)
	expireAndGet(1)
	p.OmitRefreshToken(false)
	expireAndGet(1) // the stored one still stands
	if n := p.Refreshes() - before; n != 4 {
		t.Fatalf("%d refreshes; want 4", n)
	}

	p.FailRefreshes(http.StatusServiceUnavailable) // the provider down: DEGRADED, and back by itself
	time.Sleep(2100 * time.Millisecond)
	_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
	wantCode(t, err, codes.Unavailable, credbrokerv1.ErrorReason_PROVIDER_UNAVAILABLE.String())
	p.FailRefreshes(0)
	waitFor(t, 10*time.Second, func() error {
		_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
		return err
	})

	p.RevokeAll()
	time.Sleep(2100 * time.Millisecond)
	before = p.Refreshes()
	for range 3 {
		_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
		wantCode(t, err, codes.FailedPrecondition, credbrokerv1.ErrorReason_REFRESH_TOKEN_REVOKED.String())
	}
	if n := p.Refreshes() - before; n != 1 {
		t.Fatalf("%d refreshes with a revoked refresh token; want 1", n)
	}
	got, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/example"})
	if err != nil || got.GetAccount().GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_NEEDS_ATTENTION ||
		got.GetAccount().GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_REFRESH_TOKEN_REVOKED {
		t.Fatalf("the account after its refresh token was revoked: %v %v", got, err)
	}

	location, cookie := h.continueSignIn(h.do("POST", "/accounts/example/reconnect", h.form("/accounts/example", url.Values{}), nil))
	if resp, body := h.callback(p.signIn(t, location, "allow"), cookie); resp.StatusCode != http.StatusOK || !strings.Contains(body, "reconnected") {
		t.Fatalf("the reconnect's callback: %d\n%s", resp.StatusCode, body)
	}
	if tok := b.token(t, "example"); tok.GetAccessToken() == "" {
		t.Fatal("no token after reconnecting")
	}
	got, err = b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/example"})
	if err != nil || got.GetAccount().GetState() != credbrokerv1.AccountState_ACCOUNT_STATE_ACTIVE || len(got.GetAccount().GetGrants()) != 1 {
		t.Fatalf("the account after reconnecting: %v %v", got, err)
	}
}

// On a cluster, refreshes of an account whose users sign in by redirect
// are single-flight across replicas (200 callers on 3 replicas: one
// refresh), and each replica refreshes with the refresh token another
// stored (the provider revokes a reused one at once here). A refresh
// token the provider rotated while the storage was out of reach is kept
// and stored first once it is back: the next refresh uses it, not the
// stored one the provider rotated away.
func TestRefreshTokensClusterWide(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	p.SetTokenTTL(12*time.Second, false) // served for 2 s: 10 s is the margin
	p.SetRotation(true, 0)
	rs, cluster := startReplicas(t, 3, 1, func(_ int, cfg *server.Config) {
		cfg.Tokens.ScanInterval = time.Hour // callers, not the refresher, find the tokens expired
		cfg.Provider.Timeout = 10 * time.Second
	})
	h := &hubClient{t: t, base: rs[0].hubURL}
	h.signIn(rs[0].keys.admin)
	linkByRedirect(t, rs[0], h, p, "example")
	rs[0].grant(t, "example", svcPrincipal)
	get := func(r *broker) error {
		_, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
		return err
	}
	for _, r := range rs {
		waitFor(t, 5*time.Second, func() error { return get(r) })
	}
	before := p.Refreshes()
	for round := range 2 {
		time.Sleep(2100 * time.Millisecond)
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := range 200 {
			wg.Go(func() { errs <- get(rs[i%3]) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: GetToken: %v", round, err)
			}
		}
		if n := p.Refreshes() - before; n != round+1 {
			t.Fatalf("round %d: %d refreshes for 200 callers on 3 replicas; want %d", round, n, round+1)
		}
	}

	// The storage goes while the provider answers a rotation.
	var once sync.Once
	p.OnRefresh(func(s oauthfake.Stage) {
		if s == oauthfake.Rotated {
			once.Do(func() { cluster.Stop(0) })
		}
	})
	time.Sleep(2100 * time.Millisecond)
	if err := get(rs[1]); err == nil {
		t.Fatal("a token with the storage out of reach")
	}
	p.OnRefresh(nil)
	cluster.Restart(0)
	waitFor(t, 20*time.Second, func() error { return get(rs[1]) })
	time.Sleep(2100 * time.Millisecond)
	waitFor(t, 20*time.Second, func() error { // that replica may still be catching up with etcd
		err := get(rs[2])
		if err != nil && status.Code(err) != codes.Unavailable {
			t.Fatalf("GetToken on another replica after the kept refresh token was stored: %v", err)
		}
		return err
	})
}

// A connect link for an account whose users sign in by redirect: the
// admin chooses the provider and app (the client secret stays sealed with
// the link); whoever opens it only signs in at the provider, and the
// account is linked; the link is then used up. Without the provider's
// settings, no link is made.
func TestConnectLinkSignsInByRedirect(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	b := startBroker(t)
	connects := credbrokerv1.NewConnectServiceClient(b.conn)
	req := &credbrokerv1.CreateConnectSessionRequest{AccountId: "example", Provider: credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE}
	_, err := connects.CreateConnectSession(ctx, req)
	wantCode(t, err, codes.InvalidArgument, "oauth2_authorization_code")
	req.Oauth2AuthorizationCode = &credbrokerv1.OAuth2AuthorizationCode{
		AuthorizationUrl: p.url + oauthfake.AuthorizePath, TokenUrl: p.url + oauthfake.TokenPath, ClientId: appID, ClientSecret: appSecret,
		Scopes: []string{"read"}, ApiBaseUrl: p.url + oauthfake.APIPath,
	}
	resp, err := connects.CreateConnectSession(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	link := strings.TrimPrefix(resp.GetUrl(), b.hubURL)

	visitor := &hubClient{t: t, base: b.hubURL}
	r, body := visitor.do("GET", link, nil, nil)
	if host := strings.TrimPrefix(p.url, "http://"); r.StatusCode != http.StatusOK || !strings.Contains(body, host) || strings.Contains(body, `name="client_secret"`) || strings.Contains(body, appID) {
		t.Fatalf("the link's page: %d\n%s", r.StatusCode, body)
	}
	location, cookie := visitor.continueSignIn(visitor.do("POST", link, url.Values{}, nil))
	r, body = visitor.callback(p.signIn(t, location, "allow"), cookie)
	if r.StatusCode != http.StatusOK || !strings.Contains(body, "is linked") || strings.Contains(body, "/accounts/") {
		t.Fatalf("the way back through the link: %d\n%s", r.StatusCode, body)
	}
	got, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/example"})
	if err != nil || got.GetAccount().GetProvider() != credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE {
		t.Fatalf("the account linked through the link: %v %v", got, err)
	}
	if r, body = visitor.do("GET", link, nil, nil); r.StatusCode != http.StatusBadRequest || !strings.Contains(body, "was used") {
		t.Fatalf("the link once used: %d\n%s", r.StatusCode, body)
	}
	canaries := map[string]string{"client secret": appSecret, "user's password": appPassword}
	for i, rt := range p.RefreshTokens() {
		canaries[fmt.Sprint("refresh token ", i)] = rt
	}
	visitor.noCanaries(b.logs.String(), 4, "example", canaries)
}

// What a sign-in by redirect must not let through: two sign-ins in one
// browser both finish; signing out ends one under way; an error
// description that echoes the client secret is withheld; a reconnect
// whose account was linked anew meanwhile sends nothing to the provider;
// an authorization URL may not set what the broker sets.
func TestSignInHoldsItsGround(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	b := startBroker(t)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)

	first, firstCookie := h.startSignIn(p, p.signInForm("first"))
	second, secondCookie := h.startSignIn(p, p.signInForm("second"))
	if firstCookie.Name == secondCookie.Name {
		t.Fatal("two sign-ins share a cookie")
	}
	for location, cookie := range map[string]*http.Cookie{second: secondCookie, first: firstCookie} {
		if resp, body := h.callback(p.signIn(t, location, "allow"), cookie); resp.StatusCode != http.StatusOK {
			t.Fatalf("one of two sign-ins in a browser: %d\n%s", resp.StatusCode, body)
		}
	}

	location, cookie := h.startSignIn(p, p.signInForm("afterout"))
	back := p.signIn(t, location, "allow")
	resp, _ := h.do("POST", "/signout", h.form("/accounts", url.Values{}), map[string]string{"Cookie": cookie.Name + "=" + cookie.Value})
	cleared := false
	for _, c := range resp.Cookies() {
		cleared = cleared || (c.Name == cookie.Name && c.MaxAge < 0)
	}
	if !cleared {
		t.Fatal("signing out left the sign-in's cookie")
	}
	if resp, body := h.callback(back, nil); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a sign-in finished after signing out: %d\n%s", resp.StatusCode, body)
	}
	h.signIn(b.keys.admin)

	location, cookie = h.startSignIn(p, p.signInForm("echo"))
	q, _ := url.Parse(location)
	echo := b.hubURL + "/oauth2/callback?" + url.Values{"state": {q.Query().Get("state")}, "error": {"access_denied"}, "error_description": {"your secret is " + appSecret}}.Encode()
	if resp, body := h.callback(echo, cookie); resp.StatusCode != http.StatusBadRequest || strings.Contains(body, appSecret) || !strings.Contains(body, "withheld") {
		t.Fatalf("an error description echoing the client secret: %d\n%s", resp.StatusCode, body)
	}

	linkByRedirect(t, b, h, p, "moved")
	location, cookie = h.continueSignIn(h.do("POST", "/accounts/moved/reconnect", h.form("/accounts/moved", url.Values{}), nil))
	back = p.signIn(t, location, "allow")
	if _, err := b.accounts.DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: "accounts/moved"}); err != nil {
		t.Fatal(err)
	}
	linkByRedirect(t, b, h, p, "moved")
	requests := p.TokenRequests()
	if resp, body := h.callback(back, cookie); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "changed while you signed in") {
		t.Fatalf("a reconnect of an account linked anew meanwhile: %d\n%s", resp.StatusCode, body)
	}
	if p.TokenRequests() != requests {
		t.Fatal("the provider was asked for a reconnect of another account")
	}

	bad := p.signInForm("bad")
	bad.Set("authorization_url", p.url+oauthfake.AuthorizePath+"?redirect_uri=https://evil.example/cb")
	if body := h.post("/accounts/new?kind=oauth2-code", "/accounts/new", bad, http.StatusBadRequest, ""); !strings.Contains(fieldError(body, "authorization_url"), "redirect_uri") {
		t.Fatalf("an authorization URL that sets the redirect URI:\n%s", body)
	}
	bad.Set("authorization_url", p.url+oauthfake.AuthorizePath+"#")
	if body := h.post("/accounts/new?kind=oauth2-code", "/accounts/new", bad, http.StatusBadRequest, ""); fieldError(body, "authorization_url") == "" {
		t.Fatalf("an authorization URL with a fragment:\n%s", body)
	}
}

// A reconnect while a refresh is under way: the refresh (with the old
// refresh token) stores its outcome first, never over the reconnect's new
// tokens, so the account goes on with the grant of the new sign-in.
func TestReconnectWaitsForARefresh(t *testing.T) {
	ctx := context.Background()
	p := startOAuthProvider(t)
	p.SetTokenTTL(12*time.Second, false) // served for 2 s: 10 s is the margin
	cfg, fake, logs := newConfig(t)
	cfg.Tokens.ScanInterval = time.Hour
	b := startWith(t, cfg, fake, logs)
	h := &hubClient{t: t, base: b.hubURL}
	h.signIn(b.keys.admin)
	linkByRedirect(t, b, h, p, "example")
	b.grant(t, "example", svcPrincipal)

	held, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	p.OnRefresh(func(s oauthfake.Stage) {
		if s == oauthfake.Received {
			once.Do(func() { close(held); <-release })
		}
	})
	time.Sleep(2100 * time.Millisecond)
	refreshed := make(chan error, 1)
	go func() {
		_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
		refreshed <- err
	}()
	<-held
	location, cookie := h.continueSignIn(h.do("POST", "/accounts/example/reconnect", h.form("/accounts/example", url.Values{}), nil))
	back := p.signIn(t, location, "allow")
	reconnected := make(chan string, 1)
	go func() {
		_, body := h.callback(back, cookie)
		reconnected <- body
	}()
	time.Sleep(500 * time.Millisecond) // the reconnect waits for the refresh
	close(release)
	if err := <-refreshed; err != nil {
		t.Fatalf("the refresh under way: %v", err)
	}
	if body := <-reconnected; !strings.Contains(body, "reconnected") {
		t.Fatalf("the reconnect:\n%s", body)
	}
	p.OnRefresh(nil)
	p.RevokeOlderFamilies() // only the new sign-in's grant works now
	time.Sleep(2100 * time.Millisecond)
	if _, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/example"}); err != nil {
		t.Fatalf("a refresh after the reconnect: %v", err)
	}
}
