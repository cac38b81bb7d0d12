// Package oauthfake is a stand-in for an OAuth 2.0 provider that signs its
// users in by redirect (authorization code with PKCE) and issues refresh
// tokens, for tests and for trying the broker: a real sign-in form, codes
// that work once and only with their PKCE verifier and redirect URI,
// refresh-token rotation with reuse detection (a refresh token used again
// revokes its whole family, as real providers do, except within a short
// grace interval after its rotation, as Auth0 and Okta allow), an API that
// accepts the tokens it issued, and failures on demand.
package oauthfake

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Paths the fake serves.
const (
	AuthorizePath = "/authorize"
	TokenPath     = "/token"
	APIPath       = "/api"
)

// Fake is an http.Handler; serve it with httptest.NewServer.
type Fake struct {
	clientID, clientSecret string
	// User and Password sign in on the form.
	user, password string

	refreshes, tokenRequests atomic.Int64

	mu    sync.Mutex
	codes map[string]grant // code -> what it was issued for
	// refresh tokens: each belongs to a family (one sign-in); a rotated one
	// is replaced, and still accepted until its grace ends.
	refreshTokens map[string]*refreshToken
	revoked       map[string]bool // families revoked by reuse, or by Revoke
	families      []string        // oldest first
	issued        map[string]time.Time
	tokenTTL      time.Duration
	noExpiresIn   bool
	rotate        bool
	grace         time.Duration
	omitRefresh   bool // refresh answers carry no refresh_token
	failRefresh   int  // HTTP status of every refresh answer; 0: normal
	onRefresh     func(Stage)
	now           func() time.Time
}

// Stage is a point of a refresh at which a test may act (kill the broker).
type Stage int

const (
	// Received: the request came in; nothing changed yet.
	Received Stage = iota
	// Rotated: the refresh token was rotated, and the answer is about to
	// be written.
	Rotated
	// Answered: the answer was written.
	Answered
)

// OnRefresh calls fn at each stage of every refresh from now on (with
// the fake locked, but at Received: fn must not call it then). nil stops.
func (f *Fake) OnRefresh(fn func(Stage)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onRefresh = fn
}

// SignIn plays the user at the sign-in page that location (where the
// broker sent the browser) shows: it signs in and allows access, or with
// deny denies it, and returns where the fake sends the browser back.
func (f *Fake) SignIn(location string, deny bool) (string, error) {
	u, err := url.Parse(location)
	if err != nil {
		return "", err
	}
	form := u.Query()
	form.Set("username", f.user)
	form.Set("password", f.password)
	form.Set("decision", map[bool]string{true: "deny", false: "allow"}[deny])
	r := httptest.NewRequest(http.MethodPost, AuthorizePath, strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	f.ServeHTTP(w, r)
	if w.Code != http.StatusFound {
		return "", fmt.Errorf("the sign-in page answered %d: %s", w.Code, w.Body.String())
	}
	return w.Header().Get("Location"), nil
}

type grant struct {
	redirectURI, challenge, scope string
	expires                       time.Time
}

type refreshToken struct {
	family    string
	scope     string
	rotatedAt time.Time // zero while current
}

// New returns a fake with one client and one user, which issues access
// tokens that live an hour and rotates refresh tokens with a grace of
// two seconds.
func New(clientID, clientSecret, user, password string) *Fake {
	return &Fake{
		clientID: clientID, clientSecret: clientSecret, user: user, password: password,
		codes: map[string]grant{}, refreshTokens: map[string]*refreshToken{}, revoked: map[string]bool{}, issued: map[string]time.Time{},
		tokenTTL: time.Hour, rotate: true, grace: 2 * time.Second, now: time.Now,
	}
}

// SetTokenTTL sets the lifetime of the access tokens issued from now on;
// with omit, answers carry no expires_in.
func (f *Fake) SetTokenTTL(d time.Duration, omit bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenTTL, f.noExpiresIn = d, omit
}

// SetRotation sets whether refreshes rotate the refresh token, and the
// grace interval in which a rotated one is still accepted.
func (f *Fake) SetRotation(rotate bool, grace time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rotate, f.grace = rotate, grace
}

// OmitRefreshToken makes refresh answers carry no refresh_token (the old
// one stays valid), as some providers do.
func (f *Fake) OmitRefreshToken(omit bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.omitRefresh = omit
}

// FailRefreshes makes every refresh answer with HTTP status code (0: normal).
func (f *Fake) FailRefreshes(code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failRefresh = code
}

// RevokeOlderFamilies revokes the refresh tokens of every sign-in but the
// latest, as a provider does when a user's consent is renewed.
func (f *Fake) RevokeOlderFamilies() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, family := range f.families[:max(0, len(f.families)-1)] {
		f.revoked[family] = true
	}
}

// RevokeAll revokes every refresh token issued so far, as a user who
// removes the app's access does.
func (f *Fake) RevokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, rt := range f.refreshTokens {
		f.revoked[rt.family] = true
	}
}

// RefreshTokens are every refresh token the fake issued, for canary scans.
func (f *Fake) RefreshTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var all []string
	for rt := range f.refreshTokens {
		all = append(all, rt)
	}
	return all
}

// TokenRequests counts every request to the token endpoint.
func (f *Fake) TokenRequests() int { return int(f.tokenRequests.Load()) }

// Refreshes counts refresh-token requests.
func (f *Fake) Refreshes() int { return int(f.refreshes.Load()) }

func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == AuthorizePath && r.Method == http.MethodGet:
		f.signInPage(w, r, "")
	case r.URL.Path == AuthorizePath && r.Method == http.MethodPost:
		f.signIn(w, r)
	case r.URL.Path == TokenPath && r.Method == http.MethodPost:
		f.token(w, r)
	case strings.HasPrefix(r.URL.Path, APIPath+"/"):
		f.api(w, r)
	default:
		http.NotFound(w, r)
	}
}

var page = template.Must(template.New("signin").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in to Example</title></head>
<body>
<h1>Sign in to Example</h1>
<p>The app <b>{{.ClientID}}</b> asks for access to your account ({{.Scope}}).</p>
{{if .Error}}<p id="error">{{.Error}}</p>{{end}}
<form method="post" action="/authorize">
{{range $k, $v := .Params}}<input type="hidden" name="{{$k}}" value="{{$v}}">{{end}}
<label for="username">Username</label> <input id="username" name="username">
<label for="password">Password</label> <input id="password" name="password" type="password">
<button type="submit" id="allow" name="decision" value="allow">Allow</button>
<button type="submit" id="deny" name="decision" value="deny">Deny</button>
</form>
</body></html>`))

// signInPage shows the sign-in form for an authorization request, or says
// what is wrong with it (never redirecting to an unchecked URI).
func (f *Fake) signInPage(w http.ResponseWriter, r *http.Request, problem string) {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		q = r.PostForm
	}
	switch {
	case q.Get("client_id") != f.clientID:
		http.Error(w, "unknown client_id", http.StatusBadRequest)
		return
	case q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" || q.Get("redirect_uri") == "":
		http.Error(w, "this provider needs response_type=code, a redirect_uri and a PKCE S256 code_challenge", http.StatusBadRequest)
		return
	}
	params := map[string]string{}
	for _, k := range []string{"client_id", "response_type", "redirect_uri", "scope", "state", "code_challenge", "code_challenge_method"} {
		params[k] = q.Get(k)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = page.Execute(w, map[string]any{"ClientID": f.clientID, "Scope": q.Get("scope"), "Params": params, "Error": problem})
}

// signIn checks the user's password and sends the browser back with a
// code, or with error=access_denied if the user denied access.
func (f *Fake) signIn(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	back, err := url.Parse(r.PostFormValue("redirect_uri"))
	if err != nil || r.PostFormValue("client_id") != f.clientID {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	q := url.Values{"state": {r.PostFormValue("state")}}
	if r.PostFormValue("decision") == "deny" {
		q.Set("error", "access_denied")
		q.Set("error_description", "The user denied access.")
	} else {
		if r.PostFormValue("username") != f.user || r.PostFormValue("password") != f.password {
			f.signInPage(w, r, "Wrong username or password.")
			return
		}
		code := random()
		f.mu.Lock()
		f.codes[code] = grant{redirectURI: back.String(), challenge: r.PostFormValue("code_challenge"), scope: r.PostFormValue("scope"), expires: f.now().Add(time.Minute)}
		f.mu.Unlock()
		q.Set("code", code)
	}
	back.RawQuery = q.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

// token answers authorization_code and refresh_token grants.
func (f *Fake) token(w http.ResponseWriter, r *http.Request) {
	f.tokenRequests.Add(1)
	if r.PostFormValue("grant_type") == "refresh_token" {
		f.mu.Lock()
		hook := f.onRefresh
		f.mu.Unlock()
		if hook != nil {
			hook(Received) // unlocked: it may hold the request while others go on
		}
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	id, sec, ok := r.BasicAuth()
	if !ok {
		id, sec = r.PostFormValue("client_id"), r.PostFormValue("client_secret")
	}
	if id != f.clientID || sec != f.clientSecret {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed.")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.PostFormValue("grant_type") {
	case "authorization_code":
		g, ok := f.codes[r.PostFormValue("code")]
		delete(f.codes, r.PostFormValue("code")) // a code works once
		sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
		switch {
		case !ok || f.now().After(g.expires):
			oauthError(w, http.StatusBadRequest, "invalid_grant", "The code is unknown, used or expired.")
		case r.PostFormValue("redirect_uri") != g.redirectURI:
			oauthError(w, http.StatusBadRequest, "invalid_grant", "The redirect_uri differs from the authorization request's.")
		case base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge:
			oauthError(w, http.StatusBadRequest, "invalid_grant", "The code_verifier does not match the code_challenge.")
		default:
			f.answer(w, random(), g.scope)
		}
	case "refresh_token":
		f.refreshes.Add(1)
		f.refresh(w, r.PostFormValue("refresh_token"))
		if fl, ok := w.(http.Flusher); ok {
			fl.Flush()
		}
		f.stage(Answered)
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "")
	}
}

// refresh answers a refresh; f.mu is held. A rotated refresh token used
// again after its grace revokes its family.
func (f *Fake) refresh(w http.ResponseWriter, token string) {
	if f.failRefresh != 0 {
		oauthError(w, f.failRefresh, "server_error", "failing on purpose")
		return
	}
	rt, ok := f.refreshTokens[token]
	switch {
	case !ok || f.revoked[rt.family]:
		oauthError(w, http.StatusBadRequest, "invalid_grant", "The refresh token is invalid or revoked.")
		return
	case !rt.rotatedAt.IsZero() && f.now().Sub(rt.rotatedAt) > f.grace:
		f.revoked[rt.family] = true
		oauthError(w, http.StatusBadRequest, "invalid_grant", "The refresh token was reused; every token of this grant is revoked.")
		return
	}
	if !f.rotate || f.omitRefresh {
		f.answerRefreshing(w, rt.family, rt.scope, "")
		return
	}
	if rt.rotatedAt.IsZero() {
		rt.rotatedAt = f.now()
	}
	next := random()
	f.refreshTokens[next] = &refreshToken{family: rt.family, scope: rt.scope}
	f.stage(Rotated)
	f.answerRefreshing(w, rt.family, rt.scope, next)
}

// stage tells the test's hook, if any, of a refresh's stage; f.mu is held.
func (f *Fake) stage(s Stage) {
	if f.onRefresh != nil {
		f.onRefresh(s)
	}
}

// answer issues a new family's first tokens; f.mu is held.
func (f *Fake) answer(w http.ResponseWriter, family, scope string) {
	f.families = append(f.families, family)
	rt := random()
	f.refreshTokens[rt] = &refreshToken{family: family, scope: scope}
	f.answerRefreshing(w, family, scope, rt)
}

func (f *Fake) answerRefreshing(w http.ResponseWriter, family, scope, refresh string) {
	access := "fake-access-" + random()
	f.issued[access] = f.now().Add(f.tokenTTL)
	body := map[string]any{"access_token": access, "token_type": "Bearer", "scope": scope}
	if !f.noExpiresIn {
		body["expires_in"] = int(f.tokenTTL.Seconds())
	}
	if refresh != "" {
		body["refresh_token"] = refresh
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(body)
}

// api answers any call that carries a live token it issued.
func (f *Fake) api(w http.ResponseWriter, r *http.Request) {
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	f.mu.Lock()
	expires, ok := f.issued[token]
	f.mu.Unlock()
	if !ok || f.now().After(expires) {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

func oauthError(w http.ResponseWriter, code int, errCode, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": errCode, "error_description": description})
}

func random() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
