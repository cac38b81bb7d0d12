package server_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"google.golang.org/protobuf/types/known/durationpb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// browser starts a headless Chromium (Debian's, which make deps installs)
// for the test, or skips it where there is none, unless the test command
// requires every part (CREDBROKER_REQUIRE_ALL).
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CREDBROKER_REQUIRE_ALL") != "" {
			t.Fatal("no chromium: make deps installs it")
		}
		t.Skip("no chromium (make deps installs it)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1200, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	return ctx
}

// tab is a browser tab of a test: a step that fails fails the test.
type tab struct {
	t   *testing.T
	ctx context.Context
	// pages are what the test's tabs showed, for the canary scan.
	pages *[]string
}

func (b tab) do(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.t.Fatal(err)
	}
}

func (b tab) text(a chromedp.Action[string]) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, a)
	if err != nil {
		b.t.Fatal(err)
	}
	return v
}

// capture keeps the page and its URL for the canary scan.
func (b tab) capture() {
	b.t.Helper()
	*b.pages = append(*b.pages, b.text(chromedp.Location())+"\n"+b.text(chromedp.OuterHTML("html")))
}

// screenshot saves the page as name.png in $CREDBROKER_HUB_SCREENSHOTS, if
// set (make hub-screenshots).
func (b tab) screenshot(name string) {
	b.t.Helper()
	dir := os.Getenv("CREDBROKER_HUB_SCREENSHOTS")
	if dir == "" {
		return
	}
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err == nil {
		err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	}
	if err != nil {
		b.t.Fatal(err)
	}
}

// An admin signs in to the Hub in a real browser: a wrong key is shown
// next to the field, the admin key opens the Accounts page with the linked
// account, the session cookie is HttpOnly and SameSite=Strict; linking an
// account with a wrong secret shows the error next to the field and an
// empty secret field, the right one the confirmation; signing out returns
// to the sign-in page and the Accounts page is closed again.
// No page, URL or history entry holds the keys, the secret or the token.
func TestHubInABrowser(t *testing.T) {
	ctx := browser(t)
	b := startBroker(t)
	b.link(t, "acme")
	token := b.token(t, "acme").GetAccessToken()
	const wrongKey = "cbk_wrong-key-canary-0123456789abcdef0123456789"

	var pages []string
	admin := tab{t: t, ctx: ctx, pages: &pages}
	do, text, capture := admin.do, admin.text, admin.capture

	do(chromedp.Navigate(b.hubURL+"/"), chromedp.WaitVisible("#caller_key"))
	capture()
	do(chromedp.SendKeys("#caller_key", wrongKey), chromedp.Submit("#caller_key"), chromedp.WaitVisible(".field-error"))
	if fieldError := text(chromedp.Text(".field-error")); !strings.Contains(fieldError, "unknown caller key") {
		t.Errorf("the wrong key's error next to the field: %q", fieldError)
	}
	capture()
	do(chromedp.SendKeys("#caller_key", b.keys.admin), chromedp.Submit("#caller_key"), chromedp.WaitVisible("table"))
	if accounts := text(chromedp.Text("table")); !strings.Contains(accounts, "acme") || !strings.Contains(accounts, "Active") {
		t.Errorf("the Accounts page shows: %q", accounts)
	}
	capture()
	admin.screenshot("accounts")
	cookies, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{})
	if err != nil {
		t.Fatal(err)
	}
	if c := cookies.Cookies; len(c) != 1 || !c[0].HTTPOnly || c[0].SameSite != network.CookieSameSiteStrict {
		t.Errorf("the session cookie: %+v", c)
	}
	// Link a second account: a wrong secret first, then the right one.
	do(chromedp.Navigate(b.hubURL+"/accounts/new"), chromedp.WaitVisible("#client_secret"))
	do(
		chromedp.SendKeys("#account_id", "globex"), chromedp.SendKeys("#client_id", clientID),
		chromedp.SendKeys("#client_secret", wrongKey), chromedp.Submit("#client_secret"), chromedp.WaitVisible("#client_secret_error"))
	capture()
	admin.screenshot("link-error")
	if secret := text(chromedp.Value("#client_secret")); secret != "" {
		t.Error("the form came back with the secret filled in")
	}
	do(chromedp.SendKeys("#client_secret", clientSecret), chromedp.Submit("#client_secret"), chromedp.WaitVisible("#notice"))
	if confirmed := text(chromedp.Text("#notice")); !strings.Contains(confirmed, "linked") || !strings.Contains(text(chromedp.Text("h1")), "globex") {
		t.Errorf("the confirmation says: %q", confirmed)
	}
	capture()
	admin.screenshot("account")
	// The other kinds: a JumpCloud API key, generic client credentials.
	b.fake.SetAPIKey(apiKey, "")
	do(chromedp.Navigate(b.hubURL+"/accounts/new?kind=jumpcloud-api-key"), chromedp.WaitVisible("#api_key"),
		chromedp.SendKeys("#account_id", "legacy"), chromedp.SendKeys("#api_key", apiKey), chromedp.Submit("#api_key"),
		chromedp.WaitVisible("#add-grant"))
	if h := text(chromedp.Text("h1")); !strings.Contains(h, "legacy") {
		t.Errorf("the API key's page: %q", h)
	}
	capture()
	do(chromedp.Navigate(b.hubURL+"/accounts/new?kind=oauth2"), chromedp.WaitVisible("#token_url"),
		chromedp.SendKeys("#account_id", "generic"), chromedp.SendKeys("#token_url", b.cfg.Provider.JumpCloudTokenURLUS),
		chromedp.SendKeys("#client_id", clientID), chromedp.SendKeys("#client_secret", clientSecret), chromedp.SendKeys("#scopes", "api"), chromedp.Submit("#client_secret"),
		chromedp.WaitVisible("#add-grant"))
	if h := text(chromedp.Text("h1")); !strings.Contains(h, "generic") {
		t.Errorf("the client credentials' page: %q", h)
	}
	capture()
	do(chromedp.Navigate(b.hubURL+"/accounts/globex"), chromedp.WaitVisible("#secret"))
	// Rotate its secret, grant it to the service, from its page.
	const newSecret = "canary-NEW-SECRET-browser-40ce"
	b.fake.AddClientSecret(clientID, newSecret)
	do(chromedp.SendKeys("#secret", newSecret), chromedp.Submit("#secret"),
		chromedp.WaitVisible("#secrets tbody tr:nth-child(2)"))
	if n := text(chromedp.Text("#secrets")); strings.Count(n, "sha256:") != 2 {
		t.Errorf("the secrets after adding one: %q", n)
	}
	capture()
	do(chromedp.SendKeys("#principal", svcPrincipal), chromedp.Submit("#principal"), chromedp.WaitVisible("#grants"))
	if g := text(chromedp.Text("#grants")); !strings.Contains(g, svcPrincipal) {
		t.Errorf("the grants: %q", g)
	}
	capture()
	if b.token(t, "globex").GetAccessToken() == "" {
		t.Error("no token for the account linked and granted in the browser")
	}
	// A caller key, shown once with a copy button.
	do(chromedp.Navigate(b.hubURL+"/callers"), chromedp.WaitVisible("#key_id"),
		chromedp.SendKeys("#key_id", "billing"), chromedp.Submit("#key_id"), chromedp.WaitVisible("#new_key"),
		chromedp.Click("#copy"))
	if copied := text(chromedp.Poll[string](`document.getElementById("copy").textContent != "Copy" && document.getElementById("copy").textContent`)); copied != "Copied" && copied != "Press Ctrl+C to copy" {
		t.Errorf("the copy button says %q after a click", copied)
	}
	newKey := text(chromedp.Value("#new_key"))
	if !strings.HasPrefix(newKey, "cbk_") {
		t.Errorf("the new key shown: %q", newKey)
	}
	do(chromedp.Navigate(b.hubURL+"/callers"), chromedp.WaitVisible("#keys"))
	capture()
	admin.screenshot("callers")
	// A webhook: a URL it may not use is shown next to its field, with the
	// form as sent; then its signing secret, once.
	do(chromedp.Navigate(b.hubURL+"/webhooks"), chromedp.WaitVisible("#webhook_id"),
		chromedp.SendKeys("#webhook_id", "alerts"), chromedp.SendKeys("#url", "http://alerts.example.com/hook"),
		chromedp.Click(`input[value="account-state-changed"]`), chromedp.Submit("#webhook_id"), chromedp.WaitVisible("#url_error"))
	if e := text(chromedp.Text("#url_error")); !strings.Contains(e, "must use https (http is allowed only for loopback hosts)") {
		t.Errorf("the URL's error next to the field: %q", e)
	}
	if ticked, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector('input[value="account-state-changed"]').checked`)); err != nil || !ticked {
		t.Error("the form came back without the kind ticked")
	}
	capture()
	do(chromedp.SetValue("#url", "http://127.0.0.1:1/hook"), chromedp.Submit("#webhook_id"), chromedp.WaitVisible("#new_secret"))
	signing := text(chromedp.Value("#new_secret"))
	if !strings.HasPrefix(signing, "whsec_") {
		t.Errorf("the signing secret shown: %q", signing)
	}
	do(chromedp.Navigate(b.hubURL+"/webhooks"), chromedp.WaitVisible("#webhooks"))
	if row := text(chromedp.Text("#webhooks")); !strings.Contains(row, "alerts") || !strings.Contains(row, "http://127.0.0.1:1/hook") || !strings.Contains(row, "account state changed") {
		t.Errorf("the webhooks: %q", row)
	}
	capture()
	admin.screenshot("webhooks")
	do(chromedp.Navigate(b.hubURL+"/audit?account=globex"), chromedp.WaitVisible(".events"))
	if ev := text(chromedp.Text(".events")); !strings.Contains(ev, "hub: add a grant") {
		t.Errorf("the audit page: %q", ev)
	}
	capture()
	admin.screenshot("audit")
	// An account whose users sign in by redirect: the browser goes to the
	// provider's sign-in page and back; the confirmation's link opens the
	// account's page with the (SameSite=Strict) session.
	p := startOAuthProvider(t)
	do(chromedp.Navigate(b.hubURL+"/accounts/new?kind=oauth2-code"), chromedp.WaitVisible("#authorization_url"))
	for field, value := range p.signInForm("example") {
		if field != "kind" && field != "authorization_params" {
			do(chromedp.SendKeys("#"+field, value[0]))
		}
	}
	admin.screenshot("link-oauth2-code")
	do(chromedp.Submit("#client_secret"), chromedp.WaitVisible("#continue"), chromedp.Click("#continue"), chromedp.WaitVisible("#username"),
		chromedp.SendKeys("#username", appUser), chromedp.SendKeys("#password", appPassword), chromedp.Click("#allow"),
		chromedp.WaitVisible("#notice"))
	if linked := text(chromedp.Text("#notice")); !strings.Contains(linked, "example") || !strings.Contains(linked, "linked") {
		t.Errorf("the sign-in's confirmation: %q", linked)
	}
	capture()
	do(chromedp.Click(`a[href="/accounts/example"]`), chromedp.WaitVisible("#reconnect"))
	if kind := text(chromedp.Text(".facts")); !strings.Contains(kind, "sign-in by redirect") {
		t.Errorf("the account linked by sign-in: %q", kind)
	}
	capture()
	// A connect link, made here and used in a second browser context (no
	// session, no cookies): it shows only its account's form, links it,
	// and is used up.
	do(chromedp.Navigate(b.hubURL+"/connect-links"), chromedp.WaitVisible("#account_id"),
		chromedp.SendKeys("#account_id", "initech"), chromedp.Submit("#account_id"), chromedp.WaitVisible("#new_link"))
	connectLink := text(chromedp.Value("#new_link"))
	vctx, cancelVisitor := chromedp.NewContext(ctx, chromedp.WithNewBrowserContext())
	defer cancelVisitor()
	visitor := tab{t: t, ctx: vctx, pages: &pages}
	visit, visitorText, visitorPage := visitor.do, visitor.text, visitor.capture
	visit(chromedp.Navigate(connectLink), chromedp.WaitVisible("#client_secret"))
	if page := visitorText(chromedp.OuterHTML("html")); strings.Contains(page, "signout") || strings.Contains(page, "acme") || !strings.Contains(page, "initech") {
		t.Errorf("the connect link's page shows more than its form:\n%s", page)
	}
	visitorPage()
	visitor.screenshot("connect")
	visit(chromedp.SendKeys("#client_id", clientID), chromedp.SendKeys("#client_secret", clientSecret), chromedp.Submit("#client_secret"), chromedp.WaitVisible("#notice"))
	if linked := visitorText(chromedp.Text("#notice")); !strings.Contains(linked, "initech") {
		t.Errorf("the connect link's confirmation: %q", linked)
	}
	visitorPage()
	visit(chromedp.Navigate(connectLink), chromedp.WaitVisible(".error"))
	if used := visitorText(chromedp.Text(".error")); !strings.Contains(used, "was used") {
		t.Errorf("the used link says: %q", used)
	}
	visitorPage()
	if c, err := chromedp.Call(vctx, network.GetCookies, network.GetCookiesParams{}); err != nil || len(c.Cookies) != 0 {
		t.Errorf("the connect link's visitor has cookies: %v %v", c, err)
	}
	visitorHistory, err := chromedp.Run(vctx, chromedp.NavigationEntries())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range visitorHistory.Entries {
		pages = append(pages, e.URL+" "+e.Title)
	}
	do(chromedp.Click(".signout button"), chromedp.WaitVisible("#caller_key"))
	capture()
	do(chromedp.Navigate(b.hubURL+"/accounts"), chromedp.WaitVisible("#caller_key"))
	capture()
	entries, err := chromedp.Run(ctx, chromedp.NavigationEntries())
	if err != nil {
		t.Fatal(err)
	}
	var history []string
	for _, e := range entries.Entries {
		history = append(history, e.URL+" "+e.Title)
	}
	all := strings.Join(append(pages, history...), "\n")
	if len(pages) < 14 || len(history) < 3 || !strings.Contains(all, "acme") {
		t.Fatalf("too little to scan: %d pages, %d history entries", len(pages), len(history))
	}
	for name, canary := range map[string]string{"client secret": clientSecret, "admin key": b.keys.admin, "caller key": b.keys.svc, "wrong key": wrongKey, "access token": token,
		"new secret": newSecret, "new caller key": newKey, "signing secret": signing,
		"app secret": appSecret, "user's password": appPassword, "API key": apiKey} {
		if strings.Contains(all, canary) {
			t.Errorf("a page, URL or history entry holds the %s", name)
		}
	}
}

// What the Hub refuses, in a real browser: a form another site sends to
// it (the session cookie is SameSite=Strict, and the Hub refuses forms
// from other sites anyway); an expired connect link; an expired session,
// which leads back to sign-in.
func TestHubRefusesInABrowser(t *testing.T) {
	ctx := browser(t)
	cfg, fake, logs := newConfig(t)
	var offset atomic.Int64
	cfg.Hub.Now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	b := startWith(t, cfg, fake, logs)
	var pages []string
	admin := tab{t: t, ctx: ctx, pages: &pages}
	admin.do(chromedp.Navigate(b.hubURL+"/signin"), chromedp.WaitVisible("#caller_key"),
		chromedp.SendKeys("#caller_key", b.keys.admin), chromedp.Submit("#caller_key"), chromedp.WaitVisible(".signout button"))

	// Another site's page with a form that would link an account.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!doctype html><form id="f" method="post" action="%s/accounts/new"><input name="kind" value="jumpcloud"><input name="account_id" value="planted"><input name="client_id" value="x"><input name="client_secret" value="y"><button id="go">Go</button></form>`, b.hubURL)
	}))
	t.Cleanup(evil.Close)
	admin.do(chromedp.Navigate(evil.URL), chromedp.WaitVisible("#go"), chromedp.Click("#go"), chromedp.WaitVisible(".error"))
	if refused := admin.text(chromedp.Text(".error")); !strings.Contains(refused, "another site") {
		t.Errorf("a form from another site: %q", refused)
	}
	if _, err := b.accounts.GetAccount(context.Background(), &credbrokerv1.GetAccountRequest{Name: "accounts/planted"}); err == nil {
		t.Error("a form from another site linked an account")
	}

	resp, err := credbrokerv1.NewConnectServiceClient(b.conn).CreateConnectSession(context.Background(), &credbrokerv1.CreateConnectSessionRequest{
		AccountId: "late", Provider: credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT, Ttl: durationpb.New(time.Minute),
	})
	if err != nil {
		t.Fatal(err)
	}
	offset.Store(int64(2 * time.Hour)) // past the link's expiry, and the session's
	admin.do(chromedp.Navigate(resp.GetUrl()), chromedp.WaitVisible(".error"))
	if expired := admin.text(chromedp.Text(".error")); !strings.Contains(expired, "expired") {
		t.Errorf("an expired link: %q", expired)
	}
	admin.capture()
	admin.do(chromedp.Navigate(b.hubURL+"/accounts"), chromedp.WaitVisible("#caller_key"))
	if loc := admin.text(chromedp.Location()); !strings.HasSuffix(loc, "/signin") {
		t.Errorf("an expired session went to %s, not to sign-in", loc)
	}
	admin.capture()
	if all := strings.Join(pages, "\n"); len(pages) != 2 || strings.Contains(all, b.keys.admin) {
		t.Errorf("%d pages, or a page holds the admin key", len(pages))
	}
}
