package main

import (
	"context"
	"html"
	"io"
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
	"github.com/credbroker/credbroker/server/oauthfake"
)

// The broker killed (SIGKILL) at each point of a refresh of an account
// whose users sign in by redirect: before the provider rotated the
// refresh token; after it rotated it, with its answer lost (what a crash
// between the provider's answer and the commit comes to); after its
// answer. Restarted within the provider's grace interval for a rotated
// refresh token (as Auth0 and Okta allow), the account serves tokens
// again. Restarted after it, the provider has revoked the refresh token
// for its reuse: the account goes NEEDS_ATTENTION (REFRESH_TOKEN_REVOKED)
// after one request, instead of retrying forever.
func TestRefreshKilledMidway(t *testing.T) {
	e := newE2ESetup(t)
	const grace = 3 * time.Second
	p := oauthfake.New("app", "canary-APP-SECRET-kill", "ada", "canary-PASSWORD-kill")
	p.SetTokenTTL(14*time.Second, false) // served for 4 s: 10 s is the margin
	p.SetRotation(true, grace)
	provider := httptest.NewServer(p)
	t.Cleanup(provider.Close)

	r := startBinary(t, e.bin, &e.logs, e.args...)
	admin := r.bootstrapKey
	linkByRedirect(t, r, p, provider.URL, admin, "example")
	adminConn := r.connect(t, keyCreds(admin)...)
	checker := createCheckerKey(t, adminConn)
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{
		Name: "accounts/example", Principal: "callerKeys/checker",
	}); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		name      string
		at        oauthfake.Stage
		wait      time.Duration
		recovered bool
	}{
		{"before the provider rotated the refresh token", oauthfake.Received, 0, true},
		{"after the provider rotated it, its answer lost", oauthfake.Rotated, 0, true},
		{"after the provider answered", oauthfake.Answered, 0, true},
		{"after the provider rotated it, restarted after its grace", oauthfake.Rotated, grace + time.Second, false},
	} {
		// The refresher refreshes the 4-second token within about two
		// seconds; the fake kills the broker at the chosen point of it.
		dying := r
		var once sync.Once
		p.OnRefresh(func(s oauthfake.Stage) {
			if s == c.at {
				once.Do(func() {
					_ = dying.cmd.Process.Kill()
					<-dying.done
				})
			}
		})
		select {
		case <-dying.done:
		case <-time.After(15 * time.Second):
			t.Fatalf("%s: no refresh came", c.name)
		}
		_ = dying.cmd.Wait()
		p.OnRefresh(nil)
		time.Sleep(c.wait)

		before := p.Refreshes()
		r = startBinary(t, e.bin, &e.logs, e.args...)
		tokens := credbrokerv1.NewTokenServiceClient(r.connect(t, keyCreds(checker)...))
		time.Sleep(4100 * time.Millisecond) // the token cached before has expired by now
		for range 3 {
			_, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/example"})
			switch {
			case c.recovered && err != nil:
				t.Fatalf("killed %s, restarted: GetToken: %v", c.name, err)
			case !c.recovered && status.Code(err) != codes.FailedPrecondition:
				t.Fatalf("killed %s, restarted: GetToken: %v, want FAILED_PRECONDITION", c.name, err)
			}
		}
		if !c.recovered {
			acct, err := credbrokerv1.NewAccountServiceClient(r.connect(t, keyCreds(admin)...)).GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/example"})
			if err != nil || acct.GetAccount().GetStateReason() != credbrokerv1.AccountStateReason_ACCOUNT_STATE_REASON_REFRESH_TOKEN_REVOKED {
				t.Fatalf("killed %s: the account: %v %v", c.name, acct, err)
			}
			if n := p.Refreshes() - before; n != 1 {
				t.Fatalf("killed %s: %d refreshes after the restart, want 1", c.name, n)
			}
		}
	}
	r.stop(t)
}

var (
	csrfField    = regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`)
	continueLink = regexp.MustCompile(`id="continue" href="([^"]+)"`)
)

// linkByRedirect links account id at the fake provider p (at providerURL)
// through the broker's Hub, as the admin holding adminKey: sign in, the
// form, the provider's sign-in page, the way back.
func linkByRedirect(t *testing.T, r *runningBinary, p *oauthfake.Fake, providerURL, adminKey, id string) {
	t.Helper()
	hub := "http://" + r.hubAddr
	jar := map[string]*http.Cookie{}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, form url.Values) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, hub+path, strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for _, c := range jar {
			req.AddCookie(c)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, c := range resp.Cookies() {
			jar[c.Name] = c
		}
		return resp, string(body)
	}
	do("POST", "/signin", url.Values{"caller_key": {adminKey}})
	_, page := do("GET", "/accounts/new?kind=oauth2-code", nil)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the link form:\n%s", page)
	}
	_, page = do("POST", "/accounts/new", url.Values{
		"csrf": {m[1]}, "kind": {"oauth2-code"}, "account_id": {id},
		"authorization_url": {providerURL + oauthfake.AuthorizePath}, "token_url": {providerURL + oauthfake.TokenPath},
		"client_id": {"app"}, "client_secret": {"canary-APP-SECRET-kill"}, "api_base_url": {providerURL + oauthfake.APIPath},
	})
	m = continueLink.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("the page that starts the sign-in:\n%s", page)
	}
	back, err := p.SignIn(html.UnescapeString(m[1]), false)
	if err != nil {
		t.Fatal(err)
	}
	resp, page := do("GET", strings.TrimPrefix(back, hub), nil)
	if resp.StatusCode == http.StatusSeeOther {
		resp, page = do("GET", resp.Header.Get("Location"), nil)
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "is linked") {
		t.Fatalf("the way back: %d\n%s", resp.StatusCode, page)
	}
}
