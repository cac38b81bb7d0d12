// Package jumpcloudfake is a stand-in for JumpCloud's OAuth 2.0 token
// endpoint and API, for tests and for trying the broker without a JumpCloud
// account. It checks each token request the way JumpCloud does (POST,
// client_secret_basic, grant_type=client_credentials&scope=api) and each
// API call's credentials (a token it issued, or an API key with x-org-id),
// counts requests, and can be told to fail in the ways the real one can.
package jumpcloudfake

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// TokenPath is where the fake serves tokens, as JumpCloud does.
const TokenPath = "/oauth2/token"

// APIPath is where the fake serves its API: an account's API base URL is
// the fake's URL followed by APIPath, as JumpCloud's is .../api.
const APIPath = "/api"

// Behaviour is how the fake answers well-formed token requests.
type Behaviour int

const (
	// Normal issues tokens to known clients and rejects unknown ones.
	Normal Behaviour = iota
	// RejectAll answers 401 invalid_client, as for a deleted secret.
	RejectAll
	// ServerError answers 500.
	ServerError
	// RateLimited answers 429 with the configured Retry-After.
	RateLimited
	// Slow waits for the configured delay (or until the client gives up)
	// before answering normally.
	Slow
	// Malformed answers 200 with a body that is not a token.
	Malformed
)

// Fake is an http.Handler; serve it with httptest.NewServer or http.Server.
type Fake struct {
	requests    atomic.Int64
	apiRequests atomic.Int64
	orgChecks   atomic.Int64

	mu         sync.Mutex
	clients    map[string][]string // client id -> its secrets (a service account holds up to two)
	apiKeys    map[string]string   // API key -> its organization ID ("" for a single-tenant admin)
	issued     map[string]bool     // tokens the API accepts
	apiHandler http.Handler
	apiDelay   time.Duration
	lastAPI    APIRequest
	behaviour  Behaviour
	retryAfter string
	delay      time.Duration
	tokenTTL   time.Duration
	last       string
	anySecret  string // accept any client id with this secret, if set
	renewals   renewals
}

// New returns a fake that knows one client and issues tokens that live an hour.
func New(clientID, clientSecret string) *Fake {
	return &Fake{clients: map[string][]string{clientID: {clientSecret}}, apiKeys: map[string]string{}, issued: map[string]bool{}, tokenTTL: time.Hour}
}

// SetBehaviour changes how the fake answers from the next request on.
func (f *Fake) SetBehaviour(b Behaviour) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.behaviour = b
}

// SetRetryAfter sets the Retry-After header sent with RateLimited answers.
func (f *Fake) SetRetryAfter(v string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.retryAfter = v
}

// SetDelay sets how long Slow answers take.
func (f *Fake) SetDelay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

// SetTokenTTL sets the expires_in of issued tokens.
func (f *Fake) SetTokenTTL(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenTTL = d
}

// SetClient adds a client or replaces its secrets with one.
func (f *Fake) SetClient(clientID, clientSecret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients[clientID] = []string{clientSecret}
}

// AddClientSecret gives a client another secret, as JumpCloud's "add
// secret" does for rotation.
func (f *Fake) AddClientSecret(clientID, clientSecret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients[clientID] = append(f.clients[clientID], clientSecret)
}

// RevokeClientSecret deletes one of a client's secrets; the others keep working.
func (f *Fake) RevokeClientSecret(clientID, clientSecret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clients[clientID] = slices.DeleteFunc(f.clients[clientID], func(s string) bool { return s == clientSecret })
}

// AcceptAnyClient makes the fake accept any client id with secret, as if
// every one were a service account of its own (bench/scale.sh links many).
func (f *Fake) AcceptAnyClient(secret string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.anySecret = secret
}

// Requests is the number of token requests received so far, good or bad.
func (f *Fake) Requests() int { return int(f.requests.Load()) }

// LastToken is the last access token issued.
func (f *Fake) LastToken() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.last
}

func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, APIPath+"/") {
		f.serveAPI(w, r)
		return
	}
	if r.URL.Path == RenewalsPath {
		f.serveRenewals(w, r)
		return
	}
	f.requests.Add(1)
	defer f.renewals.begin()()
	if r.URL.Path != TokenPath {
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		oauthError(w, http.StatusMethodNotAllowed, "invalid_request", "token requests must be POST")
		return
	}
	if ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); ct != "application/x-www-form-urlencoded" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "body must be application/x-www-form-urlencoded")
		return
	}
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be client_credentials")
		return
	}
	if r.PostForm.Get("scope") != "api" {
		oauthError(w, http.StatusBadRequest, "invalid_scope", "scope must be api")
		return
	}
	if r.PostForm.Has("client_secret") {
		oauthError(w, http.StatusBadRequest, "invalid_request", "service accounts authenticate with client_secret_basic")
		return
	}

	f.mu.Lock()
	behaviour, retryAfter, delay, ttl := f.behaviour, f.retryAfter, f.delay, f.tokenTTL
	f.mu.Unlock()
	switch behaviour {
	case RejectAll:
		oauthError(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed.")
		return
	case ServerError:
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	case RateLimited:
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, `{"message":"Too Many Requests"}`, http.StatusTooManyRequests)
		return
	case Slow:
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
			return
		}
	case Malformed:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token": `))
		return
	}

	clientID, ok := f.authenticate(r)
	if !ok {
		oauthError(w, http.StatusUnauthorized, "invalid_client", "Client authentication failed.")
		return
	}
	token := "jc-fake-" + randomHex(16)
	f.renewals.issued(clientID, time.Now(), ttl)
	f.mu.Lock()
	f.last = token
	f.issued[token] = true
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": token,
		"token_type":   "bearer",
		"expires_in":   int(ttl / time.Second),
		"scope":        "api",
	})
}

// authenticate checks client_secret_basic. Following RFC 6749 §2.3.1 the id
// and secret are form-encoded before Basic encoding, so decode them first.
// It returns the client id.
func (f *Fake) authenticate(r *http.Request) (string, bool) {
	rawID, rawSecret, ok := r.BasicAuth()
	if !ok {
		return "", false
	}
	id, err1 := url.QueryUnescape(rawID)
	sec, err2 := url.QueryUnescape(rawSecret)
	if err1 != nil || err2 != nil {
		return "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return id, slices.Contains(f.clients[id], sec) || (f.anySecret != "" && sec == f.anySecret)
}

func oauthError(w http.ResponseWriter, code int, errCode, desc string) {
	writeJSON(w, code, map[string]string{"error": errCode, "error_description": desc})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
