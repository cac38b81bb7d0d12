package provider

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const canarySecret = "canary-client-secret-91b2"

func TestDefaultEndpointsAreJumpCloudsDocumentedOnes(t *testing.T) {
	want := Endpoints{
		JumpCloudTokenURLUS: "https://admin-oauth.id.jumpcloud.com/oauth2/token",
		JumpCloudTokenURLEU: "https://admin-oauth.id.eu.jumpcloud.com/oauth2/token",
		JumpCloudAPIURLUS:   "https://console.jumpcloud.com/api",
		JumpCloudAPIURLEU:   "https://console.eu.jumpcloud.com/api",
		JumpCloudAPIURLIN:   "https://console.in.jumpcloud.com/api",
		// India's token endpoint is unverified: no default.
	}
	if got := DefaultEndpoints(); got != want {
		t.Fatalf("DefaultEndpoints() = %+v, want %+v", got, want)
	}
}

func jumpCloudClient(t *testing.T, timeout time.Duration) (*Client, *jumpcloudfake.Fake, Credentials) {
	t.Helper()
	fake := jumpcloudfake.New("sa-client", canarySecret)
	us := httptest.NewServer(fake)
	t.Cleanup(us.Close)
	eu := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(eu.Close)
	c := New(Config{Endpoints: Endpoints{
		JumpCloudTokenURLUS: us.URL + jumpcloudfake.TokenPath,
		JumpCloudTokenURLEU: eu.URL + jumpcloudfake.TokenPath,
		JumpCloudAPIURLUS:   "https://us.example/api",
		JumpCloudAPIURLEU:   "https://eu.example/api",
	}, Timeout: timeout})
	return c, fake, Credentials{Kind: KindJumpCloudServiceAccount, ClientID: "sa-client", ClientSecret: secret.New(canarySecret), Region: RegionUS}
}

func TestJumpCloudFetch(t *testing.T) {
	c, fake, cr := jumpCloudClient(t, 5*time.Second)
	before := time.Now()
	tok, err := c.Fetch(context.Background(), cr)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken.Reveal() != fake.LastToken() || tok.TokenType != "Bearer" {
		t.Fatalf("token matches the fake's: %v, type %q; want true, Bearer", tok.AccessToken.Reveal() == fake.LastToken(), tok.TokenType)
	}
	// expires_in 3600, less JumpCloud's 30 s.
	if lo, hi := before.Add(time.Hour-30*time.Second), time.Now().Add(time.Hour-30*time.Second); tok.Expiry.Before(lo) || tok.Expiry.After(hi) {
		t.Fatalf("expiry %v not within [%v, %v]", tok.Expiry, lo, hi)
	}
	if got := c.APIBaseURL(cr); got != "https://us.example/api" {
		t.Errorf("APIBaseURL = %q", got)
	}
	cr.Region = RegionEU
	if got := c.APIBaseURL(cr); got != "https://eu.example/api" {
		t.Errorf("EU APIBaseURL = %q", got)
	}
	// The EU endpoint is a different server: the request must go there.
	if _, err := c.Fetch(context.Background(), cr); err == nil {
		t.Error("EU fetch reached the US fake")
	}
	if h := Headers(Credentials{Kind: KindJumpCloudServiceAccount, OrgID: "5a1234567890abcdef123456"}); h["x-org-id"] != "5a1234567890abcdef123456" {
		t.Errorf("Headers = %v", h)
	}
}

// Token requests made at once, as the refresher makes them, reuse their
// connections: each new one costs a TLS handshake with the real provider.
// Rounds of 16 requests at once: with Go's default of 2 idle connections
// a host, each round after the first dials 14 (a connection may still be
// on its way back to the pool when the next round starts: hence the
// slack).
func TestConcurrentFetchesReuseConnections(t *testing.T) {
	fake := jumpcloudfake.New("sa-client", canarySecret)
	var dialed atomic.Int64
	srv := httptest.NewUnstartedServer(fake)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			dialed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := New(Config{Endpoints: Endpoints{JumpCloudTokenURLUS: srv.URL + jumpcloudfake.TokenPath, JumpCloudAPIURLUS: "https://us.example/api"}})
	cr := Credentials{Kind: KindJumpCloudServiceAccount, ClientID: "sa-client", ClientSecret: secret.New(canarySecret), Region: RegionUS}
	const atOnce, rounds = 16, 20
	for range rounds {
		var wg sync.WaitGroup
		for range atOnce {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := c.Fetch(context.Background(), cr); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	if n := dialed.Load(); n > 2*atOnce {
		t.Fatalf("%d rounds of %d token requests at once opened %d connections; want at most %d", rounds, atOnce, n, 2*atOnce)
	}
}

func TestJumpCloudFailures(t *testing.T) {
	cases := []struct {
		name       string
		setup      func(*jumpcloudfake.Fake)
		secret     string
		rejected   bool
		retryAfter time.Duration
	}{
		{name: "wrong secret", secret: "wrong-" + canarySecret, rejected: true},
		{name: "revoked", setup: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.RejectAll) }, rejected: true},
		{name: "server error", setup: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.ServerError) }},
		{name: "rate limited", setup: func(f *jumpcloudfake.Fake) {
			f.SetBehaviour(jumpcloudfake.RateLimited)
			f.SetRetryAfter("120")
		}, retryAfter: 2 * time.Minute},
		{name: "slow", setup: func(f *jumpcloudfake.Fake) {
			f.SetBehaviour(jumpcloudfake.Slow)
			f.SetDelay(time.Minute)
		}},
		{name: "malformed", setup: func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.Malformed) }},
		{name: "lifetime shorter than the margin", setup: func(f *jumpcloudfake.Fake) { f.SetTokenTTL(20 * time.Second) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, fake, cr := jumpCloudClient(t, 200*time.Millisecond)
			if tc.setup != nil {
				tc.setup(fake)
			}
			if tc.secret != "" {
				cr.ClientSecret = secret.New(tc.secret)
			}
			_, err := c.Fetch(context.Background(), cr)
			var rej *RejectedError
			var unav *UnavailableError
			switch {
			case tc.rejected:
				if !errors.As(err, &rej) || rej.Code != "invalid_client" {
					t.Fatalf("err = %v, want RejectedError invalid_client", err)
				}
			case !errors.As(err, &unav):
				t.Fatalf("err = %v, want UnavailableError", err)
			case unav.RetryAfter != tc.retryAfter:
				t.Fatalf("RetryAfter = %v, want %v", unav.RetryAfter, tc.retryAfter)
			}
			if msg := err.Error(); msg == "" || strings.Contains(msg, canarySecret) || strings.Contains(msg, "{") {
				t.Fatalf("error %q is empty, leaks the secret or quotes a body", msg)
			}
			if fake.Requests() != 1 {
				t.Fatalf("fake saw %d requests, want 1", fake.Requests())
			}
		})
	}
}

// A provider's error fields keep only RFC 6749's characters, within bounds,
// and are withheld whole if they echo the secret in any form.
func TestRejectedFieldsAreSanitized(t *testing.T) {
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name, code, description string
		wantCode, wantDesc      string
	}{
		{"clean", "invalid_client", "secret is wrong\u0007 \"quoted\" \\ caf\u00e9", "invalid_client", "secret is wrong quoted  caf"},
		{"long", long, long, NotACode, strings.Repeat("x", maxDescriptionLen) + "..."},
		{"not a code", "Invalid Client", "no", NotACode, "no"},
		{"code-shaped but not registered", "5a59586665646362", "no", "5a59586665646362", "no"},
		{"echo with spaces in the code", strings.Join(strings.Split(canarySecret, ""), " "), "no", Withheld, "no"},
		{"echo upper-cased", "invalid_client", strings.ToUpper(canarySecret), "invalid_client", Withheld},
		{"raw echo", "invalid_client", "secret " + canarySecret + " is wrong", "invalid_client", Withheld},
		{"echo with controls", "invalid_client", strings.Join(strings.Split(canarySecret, ""), "\u0001"), "invalid_client", Withheld},
		{"echo in the code", "bad_" + canarySecret, "no", Withheld, "no"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusBadRequest)
				_ = json.NewEncoder(w).Encode(map[string]string{"error": tc.code, "error_description": tc.description})
			}))
			defer srv.Close()
			c := New(Config{Timeout: time.Second})
			_, err := c.Fetch(context.Background(), Credentials{Kind: KindOAuth2ClientCredentials, TokenURL: srv.URL, ClientID: "id", ClientSecret: secret.New(canarySecret)})
			var rej *RejectedError
			if !errors.As(err, &rej) {
				t.Fatalf("err = %v", err)
			}
			if rej.Code != tc.wantCode || rej.Description != tc.wantDesc {
				t.Fatalf("Code, Description = %q, %q; want %q, %q", rej.Code, rej.Description, tc.wantCode, tc.wantDesc)
			}
			wantCallerCode := rej.Code
			if rej.Code != "invalid_client" && rej.Code != "" {
				wantCallerCode = NotACode // callers get registered codes only
			}
			if c := rej.WithoutDescription(); c.Description != "" || c.Code != wantCallerCode || rej.Description != tc.wantDesc {
				t.Fatalf("WithoutDescription() = %+v (and the original became %+v)", c, rej)
			}
		})
	}
}

func TestOAuth2ClientCredentials(t *testing.T) {
	for _, style := range []string{AuthStyleHeader, AuthStyleBody} {
		t.Run(style, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				id, sec, basic := r.BasicAuth()
				if style == AuthStyleBody {
					id, sec = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
				}
				if basic != (style == AuthStyleHeader) || id != "gen" || sec != canarySecret ||
					r.PostForm.Get("grant_type") != "client_credentials" || r.PostForm.Get("scope") != "read write" || r.PostForm.Get("audience") != "api://x" {
					w.WriteHeader(http.StatusUnauthorized)
					_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
					return
				}
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"access_token":"gen-token","token_type":"bearer","expires_in":600}`))
			}))
			defer srv.Close()
			c := New(Config{Timeout: time.Second})
			tok, err := c.Fetch(context.Background(), Credentials{
				Kind: KindOAuth2ClientCredentials, TokenURL: srv.URL, ClientID: "gen", ClientSecret: secret.New(canarySecret),
				Scopes: []string{"read", "write"}, AuthStyle: style, EndpointParams: map[string]string{"audience": "api://x"},
			})
			if err != nil || tok.AccessToken.Reveal() != "gen-token" {
				t.Fatalf("Fetch: got the expected token %v, err %v", tok.AccessToken.Reveal() == "gen-token", err)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	for in, want := range map[string]time.Duration{"": 0, "7": 7 * time.Second, "junk": 0, "-3": 0, "999999": time.Hour} {
		if got := retryAfter(in); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestCheckAPIKey(t *testing.T) {
	const key = "canary-api-key-33f0"
	var answer func(w http.ResponseWriter)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/organizations" || r.Header.Get("x-api-key") != key || r.Header.Get("x-org-id") != "5a1234567890abcdef123456" {
			t.Errorf("check sent %s with x-org-id %q (key sent: %v)", r.URL.Path, r.Header.Get("x-org-id"), r.Header.Get("x-api-key") == key)
		}
		answer(w)
	}))
	t.Cleanup(api.Close)
	c := New(Config{Endpoints: Endpoints{JumpCloudAPIURLUS: api.URL + "/api"}, Timeout: time.Second})
	cr := Credentials{Kind: KindJumpCloudAPIKey, ClientSecret: secret.New(key), Region: RegionUS, OrgID: "5a1234567890abcdef123456"}

	answer = func(w http.ResponseWriter) { _, _ = w.Write([]byte(`{"results":[]}`)) }
	if err := c.CheckAPIKey(context.Background(), cr); err != nil {
		t.Fatalf("accepted key: %v", err)
	}
	for _, tc := range []struct {
		status   int
		body     string
		rejected bool
	}{
		{http.StatusUnauthorized, `{"code":401,"message":"bad key ` + key + `","status":"Unauthorized"}`, true},
		{http.StatusNotFound, `{"message":"organization not found"}`, true},
		{http.StatusBadRequest, `not json`, true},
		{http.StatusTooManyRequests, `{}`, false},
		{http.StatusBadGateway, `<html>` + key + `</html>`, false},
	} {
		answer = func(w http.ResponseWriter) {
			w.WriteHeader(tc.status)
			_, _ = w.Write([]byte(tc.body))
		}
		err := c.CheckAPIKey(context.Background(), cr)
		var rejected *RejectedError
		var unavailable *UnavailableError
		if tc.rejected && !errors.As(err, &rejected) || !tc.rejected && !errors.As(err, &unavailable) {
			t.Fatalf("HTTP %d: %T %v", tc.status, err, err)
		}
		if strings.Contains(err.Error(), key) || strings.Contains(err.Error(), "html") {
			t.Fatalf("HTTP %d: the error quotes the key or the body: %v", tc.status, err)
		}
	}
	if err := c.CheckAPIKey(context.Background(), cr); !strings.Contains(err.Error(), "HTTP 502") {
		t.Fatalf("unavailable error: %v", err)
	}
}

// Endpoint URLs are checked again whenever they are used, as when they
// were linked: credentials are never sent in clear off loopback, nor to a
// URL that carries credentials of its own.
func TestEndpointsAreCheckedWhenUsed(t *testing.T) {
	c := New(Config{Endpoints: Endpoints{
		JumpCloudTokenURLUS: "http://jumpcloud.example/oauth2/token", JumpCloudAPIURLUS: "http://console.example/api",
	}, Timeout: time.Second})
	for name, call := range map[string]func() error{
		"service account": func() error {
			_, err := c.Fetch(context.Background(), Credentials{Kind: KindJumpCloudServiceAccount, ClientID: "id", ClientSecret: secret.New(canarySecret), Region: RegionUS})
			return err
		},
		"oauth2 with userinfo": func() error {
			_, err := c.Fetch(context.Background(), Credentials{Kind: KindOAuth2ClientCredentials, ClientID: "id", ClientSecret: secret.New(canarySecret), TokenURL: "https://user:pw@idp.example/token"})
			return err
		},
		"API key": func() error {
			return c.CheckAPIKey(context.Background(), Credentials{Kind: KindJumpCloudAPIKey, ClientSecret: secret.New(canarySecret), Region: RegionUS})
		},
	} {
		if err := call(); !errors.Is(err, ErrEndpointRefused) || strings.Contains(err.Error(), canarySecret) {
			t.Errorf("%s: %v, want ErrEndpointRefused", name, err)
		}
	}
	for _, ok := range []string{"https://idp.example/token", "http://127.0.0.1:8085/oauth2/token", "http://localhost/x", "http://[::1]:1/x"} {
		if err := CheckEndpointURL(ok); err != nil {
			t.Errorf("CheckEndpointURL(%s): %v", ok, err)
		}
	}
}
