package accounts_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const (
	clientID   = "sa"
	goodSecret = "accounts-test-secret-one"
	nextSecret = "accounts-test-secret-two"
	apiKey     = "accounts-test-api-key"
	orgID      = "5a1234567890abcdef123456"
)

// harness is a Service on a real store, with a real provider client
// pointed at the JumpCloud fake and a real token manager.
type harness struct {
	fake     *jumpcloudfake.Fake
	url      string // the fake's
	store    *store.Store
	master   *keyring.MasterKey
	keys     *keyring.Keyring
	tokens   *tokens.Manager
	svc      *accounts.Service
	tokenURL string
	apiURL   string
	// onRequest, if set, runs after each provider request, in the
	// caller's goroutine.
	onRequest func()
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	h := &harness{fake: jumpcloudfake.New(clientID, goodSecret)}
	srv := httptest.NewServer(h.fake)
	t.Cleanup(srv.Close)
	h.url = srv.URL
	h.tokenURL, h.apiURL = srv.URL+jumpcloudfake.TokenPath, srv.URL+jumpcloudfake.APIPath
	prov := provider.New(provider.Config{
		Endpoints: provider.Endpoints{
			JumpCloudTokenURLUS: h.tokenURL, JumpCloudAPIURLUS: h.apiURL,
			JumpCloudTokenURLEU: "https://eu.invalid/oauth2/token", JumpCloudAPIURLEU: "https://eu.invalid/api",
		},
		Timeout: 5 * time.Second,
		OnRequest: func(string, string, time.Duration) {
			if h.onRequest != nil {
				h.onRequest()
			}
		},
	})
	keyText, err := keyring.GenerateMasterKey()
	if err != nil {
		t.Fatal(err)
	}
	if h.master, err = keyring.ParseMasterKey(keyText); err != nil {
		t.Fatal(err)
	}
	mac, _, err := h.master.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	h.keys = keyring.New(keyring.NewMasters(h.master), mac)
	if h.store, err = store.Open(filepath.Join(t.TempDir(), "db"), time.Second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })
	if _, err := h.store.Authenticate(keyring.NewMasters(h.master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	h.tokens = tokens.New(tokens.Config{Logger: slog.New(slog.DiscardHandler)}, h.store, h.keys, prov)
	// What the broker's copies do, read afresh: the token manager holds
	// every committed account.
	synced := func(context.Context) {
		all, err := h.store.All()
		if err != nil {
			t.Errorf("synced: %v", err)
			return
		}
		h.tokens.Replace(all)
	}
	h.svc = accounts.New(h.store, h.keys, prov, h.tokens, synced)
	return h
}

func event(method string) store.AuditEvent {
	return store.AuditEvent{Time: time.Now(), Principal: "spiffe://test/admin", Method: method, Code: "OK"}
}

// serviceAccount is a request to link the fake's JumpCloud service account.
func serviceAccount(id, clientSecret string) accounts.NewAccount {
	return accounts.NewAccount{
		ID: id, DisplayName: "Acme " + id, Labels: map[string]string{"team": "blue"},
		Credentials: provider.Credentials{Kind: provider.KindJumpCloudServiceAccount, ClientID: clientID, ClientSecret: secret.New(clientSecret), Region: provider.RegionUS},
	}
}

// create links the fake's service account with goodSecret, or fails the test.
func (h *harness) create(t *testing.T, id string) accounts.View {
	t.Helper()
	v, err := h.svc.Create(context.Background(), serviceAccount(id, goodSecret), false, event("CreateAccount"))
	if err != nil {
		t.Fatalf("Create(%s): %v", id, err)
	}
	return v
}

// audit is the audit trail, newest first.
func (h *harness) audit(t *testing.T) []store.AuditEvent {
	t.Helper()
	var out []store.AuditEvent
	if err := h.store.ScanAudit(store.AuditPos{}, func(_ store.AuditPos, ev store.AuditEvent) bool {
		out = append(out, ev)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func secretIDs(v accounts.View) []string {
	var out []string
	for _, s := range v.Secrets {
		out = append(out, s.ID)
	}
	return out
}

func ids(vs []accounts.View) []string {
	out := []string{}
	for _, v := range vs {
		out = append(out, v.ID)
	}
	return out
}

// Create proves the credentials with the provider first: only an account
// the provider accepted is stored, with its audit event, and a rejected or
// unavailable provider, or validateOnly, stores nothing.
func TestCreate(t *testing.T) {
	t.Parallel()
	expire := time.Date(2031, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name         string
		in           func(h *harness) accounts.NewAccount
		fake         func(*jumpcloudfake.Fake)
		validateOnly bool
		wantErr      any // nil, or a pointer to the error type errors.As must find
		stored       bool
		tokens       int // token requests the fake must have seen
		orgChecks    int // API-key checks the fake must have seen
		tokenURL     func(h *harness) string
		apiURL       func(h *harness) string
	}{
		{
			name: "service account",
			in: func(*harness) accounts.NewAccount {
				in := serviceAccount("acme", goodSecret)
				in.SecretExpireTime = expire
				return in
			},
			stored: true, tokens: 1,
			tokenURL: func(h *harness) string { return h.tokenURL }, apiURL: func(h *harness) string { return h.apiURL },
		},
		{
			name: "oauth2 client credentials",
			in: func(h *harness) accounts.NewAccount {
				return accounts.NewAccount{ID: "acme", Credentials: provider.Credentials{
					Kind: provider.KindOAuth2ClientCredentials, ClientID: clientID, ClientSecret: secret.New(goodSecret),
					TokenURL: h.url + jumpcloudfake.TokenPath, Scopes: []string{"api"}, AuthStyle: provider.AuthStyleHeader,
					APIBaseURL: "https://api.example/v1",
				}}
			},
			stored: true, tokens: 1,
			tokenURL: func(h *harness) string { return h.url + jumpcloudfake.TokenPath }, apiURL: func(*harness) string { return "https://api.example/v1" },
		},
		{
			name: "api key",
			in: func(*harness) accounts.NewAccount {
				return accounts.NewAccount{ID: "acme", Credentials: provider.Credentials{
					Kind: provider.KindJumpCloudAPIKey, ClientSecret: secret.New(apiKey), Region: provider.RegionUS, OrgID: orgID,
				}}
			},
			fake:   func(f *jumpcloudfake.Fake) { f.SetAPIKey(apiKey, orgID) },
			stored: true, orgChecks: 1,
			tokenURL: func(*harness) string { return "" }, apiURL: func(h *harness) string { return h.apiURL },
		},
		{
			name:     "validate only",
			in:       func(*harness) accounts.NewAccount { return serviceAccount("acme", goodSecret) },
			tokenURL: func(h *harness) string { return h.tokenURL }, apiURL: func(h *harness) string { return h.apiURL },
			validateOnly: true, tokens: 1,
		},
		{
			name:    "rejected secret",
			in:      func(*harness) accounts.NewAccount { return serviceAccount("acme", "not-the-secret") },
			wantErr: new(*provider.RejectedError), tokens: 1,
		},
		{
			name:    "rejected secret, validate only",
			in:      func(*harness) accounts.NewAccount { return serviceAccount("acme", "not-the-secret") },
			wantErr: new(*provider.RejectedError), tokens: 1, validateOnly: true,
		},
		{
			name: "rejected api key",
			in: func(*harness) accounts.NewAccount {
				return accounts.NewAccount{ID: "acme", Credentials: provider.Credentials{
					Kind: provider.KindJumpCloudAPIKey, ClientSecret: secret.New("not-the-key"), Region: provider.RegionUS,
				}}
			},
			fake:    func(f *jumpcloudfake.Fake) { f.SetAPIKey(apiKey, "") },
			wantErr: new(*provider.RejectedError), orgChecks: 1,
		},
		{
			name:    "provider unavailable",
			in:      func(*harness) accounts.NewAccount { return serviceAccount("acme", goodSecret) },
			fake:    func(f *jumpcloudfake.Fake) { f.SetBehaviour(jumpcloudfake.ServerError) },
			wantErr: new(*provider.UnavailableError), tokens: 1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			if tc.fake != nil {
				tc.fake(h.fake)
			}
			in := tc.in(h)
			v, err := h.svc.Create(context.Background(), in, tc.validateOnly, event("CreateAccount"))

			if n := h.fake.Requests(); n != tc.tokens {
				t.Errorf("the fake saw %d token requests, want %d", n, tc.tokens)
			}
			if n := h.fake.OrganizationChecks(); n != tc.orgChecks {
				t.Errorf("the fake saw %d API-key checks, want %d", n, tc.orgChecks)
			}
			if tc.wantErr != nil {
				if !errors.As(err, tc.wantErr) {
					t.Errorf("Create: %v (%T), want a %T", err, err, tc.wantErr)
				}
				if v.ID != "" {
					t.Errorf("Create failed but returned a view of %q", v.ID)
				}
			} else {
				if err != nil {
					t.Fatalf("Create: %v", err)
				}
				if v.ID != "acme" || v.Status.State != tokens.StateActive || v.TokenURL != tc.tokenURL(h) || v.APIBaseURL != tc.apiURL(h) {
					t.Errorf("Create = id %q, state %q, token URL %q, API %q; want acme, active, %q, %q",
						v.ID, v.Status.State, v.TokenURL, v.APIBaseURL, tc.tokenURL(h), tc.apiURL(h))
				}
				if !v.Credentials.ClientSecret.IsZero() {
					t.Error("the view's credentials carry the secret")
				}
			}

			stored, err := h.store.Account("acme")
			events := h.audit(t)
			if !tc.stored {
				if !errors.Is(err, store.ErrNotFound) || len(events) != 0 {
					t.Fatalf("stored: %v (want ErrNotFound), %d audit events (want 0)", err, len(events))
				}
				return
			}
			if err != nil {
				t.Fatalf("the account was not stored: %v", err)
			}
			if len(events) != 1 || events[0].Method != "CreateAccount" {
				t.Errorf("audit trail %+v, want the one CreateAccount event", events)
			}
			wantSecret := accounts.Secret{ID: accounts.SecretID(in.Credentials.ClientSecret), CreateTime: stored.CreateTime, ExpireTime: in.SecretExpireTime}
			if len(v.Secrets) != 1 || !v.Secrets[0].CreateTime.Equal(wantSecret.CreateTime) || v.Secrets[0].ID != wantSecret.ID || !v.Secrets[0].ExpireTime.Equal(wantSecret.ExpireTime) {
				t.Errorf("secrets %+v, want [%+v]", v.Secrets, wantSecret)
			}
			if len(stored.Secrets) != 1 || stored.Secrets[0].ID != wantSecret.ID || len(stored.Secrets[0].Sealed) == 0 || stored.Provider != string(in.Credentials.Kind) {
				t.Errorf("stored %+v", stored)
			}
			// The change reached the token manager before Create returned.
			got, err := h.svc.Get("acme")
			if err != nil || got.Status.State != tokens.StateActive || got.DisplayName != in.DisplayName {
				t.Errorf("Get = %+v, %v", got, err)
			}
			if _, ok := h.tokens.Status("acme"); !ok {
				t.Error("the token manager does not know the new account")
			}
		})
	}
}

// A service account's first token is kept, so the first GetToken needs
// no request of its own.
func TestCreateKeepsTheProvingToken(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, "acme")
	issued, err := h.tokens.Get(context.Background(), "acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	if issued.AccessToken.Reveal() != h.fake.LastToken() || h.fake.Requests() != 1 {
		t.Errorf("GetToken after Create: token issued by the proof %v, token requests %d (want 1)",
			issued.AccessToken.Reveal() == h.fake.LastToken(), h.fake.Requests())
	}
}

// A second Create of an id is ErrAlreadyExists and leaves the first account
// as it was.
func TestCreateExistingID(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, "acme")
	h.fake.AddClientSecret(clientID, nextSecret)
	for _, validateOnly := range []bool{false, true} {
		_, err := h.svc.Create(context.Background(), serviceAccount("acme", nextSecret), validateOnly, event("CreateAccount"))
		if !errors.Is(err, accounts.ErrAlreadyExists) {
			t.Errorf("second Create (validateOnly %v): %v, want ErrAlreadyExists", validateOnly, err)
		}
	}
	v, err := h.svc.Get("acme")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{accounts.SecretID(secret.New(goodSecret))}; !slices.Equal(secretIDs(v), want) {
		t.Errorf("secrets %v, want %v", secretIDs(v), want)
	}
	if n := len(h.audit(t)); n != 1 {
		t.Errorf("%d audit events, want 1", n)
	}
}

// A caller that gives up while the provider answers finds nothing stored
// behind its back, by Create or by AddSecret.
func TestCanceledCallerStoresNothing(t *testing.T) {
	t.Parallel()
	t.Run("Create", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		ctx, cancel := context.WithCancel(context.Background())
		h.onRequest = cancel // the provider answered, then the caller gave up
		_, err := h.svc.Create(ctx, serviceAccount("acme", goodSecret), false, event("CreateAccount"))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Create: %v, want context.Canceled", err)
		}
		if h.fake.Requests() != 1 {
			t.Errorf("the fake saw %d token requests, want 1", h.fake.Requests())
		}
		if _, err := h.store.Account("acme"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("stored: %v, want ErrNotFound", err)
		}
	})
	t.Run("AddSecret", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t)
		h.create(t, "acme")
		h.fake.AddClientSecret(clientID, nextSecret)
		ctx, cancel := context.WithCancel(context.Background())
		h.onRequest = cancel
		_, _, err := h.svc.AddSecret(ctx, "acme", secret.New(nextSecret), time.Time{}, event("AddAccountSecret"))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("AddSecret: %v, want context.Canceled", err)
		}
		if h.fake.Requests() != 2 {
			t.Errorf("the fake saw %d token requests, want 2", h.fake.Requests())
		}
		if a, err := h.store.Account("acme"); err != nil || len(a.Secrets) != 1 {
			t.Errorf("stored: %d secrets, %v; want 1", len(a.Secrets), err)
		}
	})
}

// AddSecret proves the new secret with the provider and adds it only if
// that works, up to MaxSecrets, never twice.
func TestAddSecret(t *testing.T) {
	t.Parallel()
	first, second := accounts.SecretID(secret.New(goodSecret)), accounts.SecretID(secret.New(nextSecret))
	expire := time.Date(2032, 5, 6, 7, 8, 9, 0, time.UTC)
	cases := []struct {
		name    string
		id      string
		secret  string
		setup   func(*testing.T, *harness)
		wantErr error
		errType any // a pointer to the error type errors.As must find
		proved  bool
		want    []string
	}{
		{name: "new secret", id: "acme", secret: nextSecret, proved: true, want: []string{first, second}},
		{name: "secret the provider rejects", id: "acme", secret: "not-a-secret-of-sa", proved: true, errType: new(*provider.RejectedError), want: []string{first}},
		{
			name: "provider unavailable", id: "acme", secret: nextSecret, proved: true, errType: new(*provider.UnavailableError), want: []string{first},
			setup: func(_ *testing.T, h *harness) { h.fake.SetBehaviour(jumpcloudfake.ServerError) },
		},
		{name: "secret held already", id: "acme", secret: goodSecret, wantErr: accounts.ErrSecretExists, want: []string{first}},
		{
			name: "limit reached", id: "acme", secret: "accounts-test-secret-three", wantErr: accounts.ErrSecretLimit, want: []string{first, second},
			setup: func(t *testing.T, h *harness) {
				h.fake.AddClientSecret(clientID, "accounts-test-secret-three")
				if _, _, err := h.svc.AddSecret(context.Background(), "acme", secret.New(nextSecret), time.Time{}, event("AddAccountSecret")); err != nil {
					t.Fatal(err)
				}
			},
		},
		{name: "unknown account", id: "nope", secret: nextSecret, wantErr: accounts.ErrNotFound, want: []string{first}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.create(t, "acme")
			h.fake.AddClientSecret(clientID, nextSecret)
			if tc.setup != nil {
				tc.setup(t, h)
			}
			requests, events := h.fake.Requests(), len(h.audit(t))

			v, gotID, err := h.svc.AddSecret(context.Background(), tc.id, secret.New(tc.secret), expire, event("AddAccountSecret"))

			if tc.proved && h.fake.Requests() != requests+1 {
				t.Errorf("the secret was not proved: %d token requests, want %d", h.fake.Requests(), requests+1)
			}
			stored, gerr := h.svc.Get("acme")
			if gerr != nil {
				t.Fatal(gerr)
			}
			if !slices.Equal(secretIDs(stored), tc.want) {
				t.Errorf("stored secrets %v, want %v", secretIDs(stored), tc.want)
			}
			switch {
			case tc.wantErr != nil || tc.errType != nil:
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("AddSecret: %v, want %v", err, tc.wantErr)
				}
				if tc.errType != nil && !errors.As(err, tc.errType) {
					t.Errorf("AddSecret: %v (%T), want a %T", err, err, tc.errType)
				}
				if n := len(h.audit(t)); n != events {
					t.Errorf("%d audit events, want %d", n, events)
				}
				return
			case err != nil:
				t.Fatalf("AddSecret: %v", err)
			}
			if gotID != second || !slices.Equal(secretIDs(v), tc.want) || !v.Secrets[1].ExpireTime.Equal(expire) {
				t.Errorf("AddSecret = %v, secret %q expiring %v; want %v, %q expiring %v", secretIDs(v), gotID, v.Secrets[1].ExpireTime, tc.want, second, expire)
			}
			if evs := h.audit(t); len(evs) != events+1 || evs[0].Method != "AddAccountSecret" || evs[0].Detail != "add secret "+second {
				t.Errorf("newest audit event %+v, want AddAccountSecret with detail %q", evs[0], "add secret "+second)
			}
		})
	}
}

// RemoveSecret removes one of two secrets, never the last one, and refuses
// secret ids the account does not hold.
func TestRemoveSecret(t *testing.T) {
	t.Parallel()
	first, second := accounts.SecretID(secret.New(goodSecret)), accounts.SecretID(secret.New(nextSecret))
	cases := []struct {
		name     string
		secrets  int // the account holds goodSecret, then nextSecret
		id       string
		secretID string
		wantErr  error
		want     []string
	}{
		{name: "older secret", secrets: 2, id: "acme", secretID: first, want: []string{second}},
		{name: "newer secret", secrets: 2, id: "acme", secretID: second, want: []string{first}},
		{name: "last secret", secrets: 1, id: "acme", secretID: first, wantErr: accounts.ErrLastSecret, want: []string{first}},
		{name: "unknown secret", secrets: 2, id: "acme", secretID: "sha256:000000000000", wantErr: accounts.ErrNoSuchSecret, want: []string{first, second}},
		{name: "unknown secret of one", secrets: 1, id: "acme", secretID: second, wantErr: accounts.ErrNoSuchSecret, want: []string{first}},
		{name: "unknown account", secrets: 2, id: "nope", secretID: first, wantErr: accounts.ErrNotFound, want: []string{first, second}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.create(t, "acme")
			if tc.secrets == 2 {
				h.fake.AddClientSecret(clientID, nextSecret)
				if _, _, err := h.svc.AddSecret(context.Background(), "acme", secret.New(nextSecret), time.Time{}, event("AddAccountSecret")); err != nil {
					t.Fatal(err)
				}
			}
			events := len(h.audit(t))

			v, err := h.svc.RemoveSecret(context.Background(), tc.id, tc.secretID, event("RemoveAccountSecret"))

			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("RemoveSecret: %v, want %v", err, tc.wantErr)
			}
			stored, gerr := h.store.Account("acme")
			if gerr != nil {
				t.Fatal(gerr)
			}
			var storedIDs []string
			for _, s := range stored.Secrets {
				storedIDs = append(storedIDs, s.ID)
			}
			if !slices.Equal(storedIDs, tc.want) {
				t.Errorf("stored secrets %v, want %v", storedIDs, tc.want)
			}
			evs := h.audit(t)
			if tc.wantErr != nil {
				if len(evs) != events {
					t.Errorf("%d audit events, want %d", len(evs), events)
				}
				return
			}
			if !slices.Equal(secretIDs(v), tc.want) {
				t.Errorf("RemoveSecret = %v, want %v", secretIDs(v), tc.want)
			}
			if len(evs) != events+1 || evs[0].Detail != "remove secret "+tc.secretID {
				t.Errorf("newest audit event %+v, want detail %q", evs[0], "remove secret "+tc.secretID)
			}
		})
	}
}

// AddGrant adds a grant, replaces the limits of an existing one, and
// reports (recording nothing) a grant whose limits are already those;
// RemoveGrant withdraws one. Grants stay sorted by principal.
func TestGrants(t *testing.T) {
	t.Parallel()
	getOnly := grants.Limits{Methods: []string{"GET"}}
	systems := grants.Limits{Methods: []string{"GET", "POST"}, PathPrefixes: []string{"/systems"}}
	type grant struct {
		principal string
		limits    grants.Limits
	}
	steps := []struct {
		name        string
		remove      bool
		id          string
		principal   string
		limits      grants.Limits
		wantChanged bool
		wantErr     error
		want        []grant
	}{
		{name: "add", id: "acme", principal: "spiffe://test/web", wantChanged: true, want: []grant{{"spiffe://test/web", grants.Limits{}}}},
		{name: "add another, sorted first", id: "acme", principal: "spiffe://test/api", limits: getOnly, wantChanged: true,
			want: []grant{{"spiffe://test/api", getOnly}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "same limits again", id: "acme", principal: "spiffe://test/api", limits: getOnly,
			want: []grant{{"spiffe://test/api", getOnly}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "same, unlimited", id: "acme", principal: "spiffe://test/web",
			want: []grant{{"spiffe://test/api", getOnly}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "new limits replace", id: "acme", principal: "spiffe://test/api", limits: systems, wantChanged: true,
			want: []grant{{"spiffe://test/api", systems}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "limits dropped", id: "acme", principal: "spiffe://test/api", wantChanged: true,
			want: []grant{{"spiffe://test/api", grants.Limits{}}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "add to unknown account", id: "nope", principal: "spiffe://test/api", wantErr: accounts.ErrNotFound,
			want: []grant{{"spiffe://test/api", grants.Limits{}}, {"spiffe://test/web", grants.Limits{}}}},
		{name: "remove", remove: true, id: "acme", principal: "spiffe://test/web", wantChanged: true,
			want: []grant{{"spiffe://test/api", grants.Limits{}}}},
		{name: "remove again", remove: true, id: "acme", principal: "spiffe://test/web", wantErr: accounts.ErrNoSuchGrant,
			want: []grant{{"spiffe://test/api", grants.Limits{}}}},
		{name: "remove unknown principal", remove: true, id: "acme", principal: "spiffe://test/other", wantErr: accounts.ErrNoSuchGrant,
			want: []grant{{"spiffe://test/api", grants.Limits{}}}},
		{name: "remove from unknown account", remove: true, id: "nope", principal: "spiffe://test/api", wantErr: accounts.ErrNotFound,
			want: []grant{{"spiffe://test/api", grants.Limits{}}}},
		{name: "remove the last", remove: true, id: "acme", principal: "spiffe://test/api", wantChanged: true},
	}
	h := newHarness(t)
	h.create(t, "acme")
	created := map[string]time.Time{}
	for _, step := range steps {
		events := len(h.audit(t))
		var (
			v       accounts.View
			changed bool
			err     error
		)
		if step.remove {
			v, err = h.svc.RemoveGrant(context.Background(), step.id, step.principal, event("RemoveGrant"))
			changed = err == nil
		} else {
			v, changed, err = h.svc.AddGrant(context.Background(), step.id, step.principal, step.limits, "spiffe://test/admin", event("AddGrant"))
		}
		if !errors.Is(err, step.wantErr) || changed != step.wantChanged {
			t.Fatalf("%s: changed %v, error %v; want %v, %v", step.name, changed, err, step.wantChanged, step.wantErr)
		}
		if n := len(h.audit(t)); step.wantChanged && n != events+1 || !step.wantChanged && n != events {
			t.Errorf("%s: %d audit events, had %d", step.name, n, events)
		}
		stored, err := h.svc.Get("acme")
		if err != nil {
			t.Fatal(err)
		}
		views := []accounts.View{stored}
		if step.wantErr == nil {
			views = append(views, v) // an unchanged grant returns the account too
		}
		for _, v := range views {
			var got []grant
			for _, g := range v.Grants {
				got = append(got, grant{g.Principal, g.Limits})
				if g.Creator != "spiffe://test/admin" || g.CreateTime.IsZero() {
					t.Errorf("%s: grant %+v, want its creator and create time", step.name, g)
				}
				// Changing a grant's limits keeps when it was made.
				if c, ok := created[g.Principal]; ok && !c.Equal(g.CreateTime) {
					t.Errorf("%s: %s's grant was made %v, then %v", step.name, g.Principal, c, g.CreateTime)
				}
				created[g.Principal] = g.CreateTime
			}
			if !slices.EqualFunc(got, step.want, func(a, b grant) bool { return a.principal == b.principal && a.limits.Equal(b.limits) }) {
				t.Errorf("%s: grants %+v, want %+v", step.name, got, step.want)
			}
		}
	}
}

// list gathers what svc.List gives.
func list(svc *accounts.Service, after string, limit int, keep func(accounts.View) bool) ([]accounts.View, bool, error) {
	views := []accounts.View{}
	more, err := svc.List(after, limit, keep, func(v accounts.View) { views = append(views, v) })
	return views, more, err
}

// List pages through the accounts in id order, keeping only those keep
// accepts, and says whether more (that keep accepts) follow.
func TestList(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	for _, id := range []string{"a3", "a1", "a5", "a2", "a4"} {
		h.create(t, id)
	}
	odd := func(v accounts.View) bool { return map[string]bool{"a1": true, "a3": true, "a5": true}[v.ID] }
	cases := []struct {
		after    string
		limit    int
		keep     func(accounts.View) bool
		want     []string
		wantMore bool
	}{
		{"", 2, nil, []string{"a1", "a2"}, true},
		{"a2", 2, nil, []string{"a3", "a4"}, true},
		{"a4", 2, nil, []string{"a5"}, false},
		{"a3", 2, nil, []string{"a4", "a5"}, false},
		{"", 5, nil, []string{"a1", "a2", "a3", "a4", "a5"}, false},
		{"", 4, nil, []string{"a1", "a2", "a3", "a4"}, true},
		{"", 100, nil, []string{"a1", "a2", "a3", "a4", "a5"}, false},
		{"a5", 2, nil, []string{}, false},
		{"a", 1, nil, []string{"a1"}, true},
		{"", 2, odd, []string{"a1", "a3"}, true},
		{"a3", 2, odd, []string{"a5"}, false},
		{"", 3, odd, []string{"a1", "a3", "a5"}, false},
		{"a1", 1, odd, []string{"a3"}, true},
		{"a4", 1, odd, []string{"a5"}, false},
		{"", 2, func(v accounts.View) bool { return false }, []string{}, false},
		{"", 2, func(v accounts.View) bool { return v.DisplayName == "Acme a4" }, []string{"a4"}, false},
	}
	for _, tc := range cases {
		got, more, err := list(h.svc, tc.after, tc.limit, tc.keep)
		if err != nil || !slices.Equal(ids(got), tc.want) || more != tc.wantMore {
			t.Errorf("List(%q, %d, filtered %v) = %v, more %v, %v; want %v, more %v", tc.after, tc.limit, tc.keep != nil, ids(got), more, err, tc.want, tc.wantMore)
		}
	}
	got, _, err := list(h.svc, "", 1, nil)
	if err != nil || len(got) != 1 || got[0].Status.State != tokens.StateActive || got[0].APIBaseURL != h.apiURL || len(got[0].Secrets) != 1 {
		t.Errorf("List shows %+v, %v; want the account with its health, API and secret", got, err)
	}
}

// List reads the store in chunks: a filter that skips more accounts than
// one chunk holds still finds those after them, and whether more follow.
func TestListAcrossChunks(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const n = 230
	for i := range n {
		a := store.Account{ID: fmt.Sprintf("a%03d", i), Provider: string(provider.KindJumpCloudServiceAccount), ClientID: clientID, Region: provider.RegionUS}
		if err := h.store.CreateAccount(a, store.TokenState{State: string(tokens.StateActive)}, event("CreateAccount")); err != nil {
			t.Fatal(err)
		}
	}
	every := func(k int) func(accounts.View) bool {
		return func(v accounts.View) bool {
			i, err := strconv.Atoi(v.ID[1:])
			return err == nil && i%k == 0
		}
	}
	cases := []struct {
		name     string
		after    string
		limit    int
		keep     func(accounts.View) bool
		want     []string
		wantMore bool
	}{
		{"every 100th", "", 2, every(100), []string{"a000", "a100"}, true},
		{"every 100th, the rest", "a100", 2, every(100), []string{"a200"}, false},
		{"every 100th, all", "", 3, every(100), []string{"a000", "a100", "a200"}, false},
		{"only the last", "", 5, func(v accounts.View) bool { return v.ID == "a229" }, []string{"a229"}, false},
		{"the last of a page of 101", "a099", 101, nil, nil, true},
		{"none", "", 5, func(accounts.View) bool { return false }, []string{}, false},
	}
	for _, tc := range cases {
		got, more, err := list(h.svc, tc.after, tc.limit, tc.keep)
		if err != nil {
			t.Fatal(err)
		}
		if tc.want == nil { // a full page of the accounts after tc.after
			for i := range tc.limit {
				tc.want = append(tc.want, fmt.Sprintf("a%03d", 100+i))
			}
		}
		if !slices.Equal(ids(got), tc.want) || more != tc.wantMore {
			t.Errorf("%s: List = %v, more %v; want %v, more %v", tc.name, ids(got), more, tc.want, tc.wantMore)
		}
	}
	// And every account, a page at a time.
	var all []string
	for after, pages := "", 0; ; pages++ {
		got, more, err := list(h.svc, after, 64, nil)
		if err != nil || pages > n/64 {
			t.Fatalf("page %d: %v", pages, err)
		}
		all = append(all, ids(got)...)
		if !more {
			break
		}
		after = got[len(got)-1].ID
	}
	if len(all) != n || !slices.IsSorted(all) || len(slices.Compact(slices.Clone(all))) != n {
		t.Errorf("paging through every account gave %d accounts (sorted %v), want %d distinct", len(all), slices.IsSorted(all), n)
	}
}

// Update sets the fields it is given and leaves the others.
func TestUpdate(t *testing.T) {
	t.Parallel()
	name := "Renamed"
	labels := map[string]string{"team": "red", "env": "prod"}
	var none map[string]string
	cases := []struct {
		name       string
		id         string
		changes    accounts.Changes
		wantErr    error
		wantName   string
		wantLabels map[string]string
	}{
		{name: "display name", id: "acme", changes: accounts.Changes{DisplayName: &name}, wantName: name, wantLabels: map[string]string{"team": "blue"}},
		{name: "labels", id: "acme", changes: accounts.Changes{Labels: &labels}, wantName: "Acme acme", wantLabels: labels},
		{name: "labels cleared", id: "acme", changes: accounts.Changes{Labels: &none}, wantName: "Acme acme", wantLabels: nil},
		{name: "both", id: "acme", changes: accounts.Changes{DisplayName: &name, Labels: &labels}, wantName: name, wantLabels: labels},
		{name: "nothing", id: "acme", wantName: "Acme acme", wantLabels: map[string]string{"team": "blue"}},
		{name: "unknown account", id: "nope", changes: accounts.Changes{DisplayName: &name}, wantErr: accounts.ErrNotFound, wantName: "Acme acme", wantLabels: map[string]string{"team": "blue"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t)
			h.create(t, "acme")
			v, err := h.svc.Update(context.Background(), tc.id, tc.changes, event("UpdateAccount"))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Update: %v, want %v", err, tc.wantErr)
			}
			got, err := h.svc.Get("acme")
			if err != nil {
				t.Fatal(err)
			}
			views := []accounts.View{got}
			if tc.wantErr == nil {
				views = append(views, v)
			}
			for _, v := range views {
				if v.DisplayName != tc.wantName || !reflect.DeepEqual(v.Labels, tc.wantLabels) || len(v.Secrets) != 1 {
					t.Errorf("account %q, labels %v, %d secrets; want %q, %v, 1", v.DisplayName, v.Labels, len(v.Secrets), tc.wantName, tc.wantLabels)
				}
			}
		})
	}
}

// Delete removes the account, and its tokens stop being served.
func TestDelete(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, "acme")
	h.create(t, "other")
	if err := h.svc.Delete(context.Background(), "acme", event("DeleteAccount")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.Get("acme"); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if _, err := h.tokens.Get(context.Background(), "acme", 0); !errors.Is(err, tokens.ErrNotFound) {
		t.Errorf("GetToken after Delete: %v, want tokens.ErrNotFound", err)
	}
	if evs := h.audit(t); len(evs) != 3 || evs[0].Method != "DeleteAccount" {
		t.Errorf("audit trail %+v, want the DeleteAccount event last", evs)
	}
	if err := h.svc.Delete(context.Background(), "acme", event("DeleteAccount")); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if got, more, err := list(h.svc, "", 10, nil); err != nil || !slices.Equal(ids(got), []string{"other"}) || more {
		t.Errorf("List after Delete = %v, more %v, %v; want [other]", ids(got), more, err)
	}
}

// An account whose stored record fails its integrity check is shown with
// only its ID and its state.
func TestGetTampered(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, "acme")
	ctx := context.Background()
	rec, err := h.store.Backend().Get(ctx, "accounts/acme")
	if err != nil {
		t.Fatal(err)
	}
	edited := []byte(strings.Replace(string(rec.Value), "Acme acme", "Evil acme", 1))
	if string(edited) == string(rec.Value) {
		t.Fatal("the stored record does not hold the display name")
	}
	if _, err := h.store.Backend().Txn(ctx, nil, []storage.Op{storage.Put("accounts/acme", edited)}); err != nil {
		t.Fatal(err)
	}
	v, err := h.svc.Get("acme")
	if err != nil {
		t.Fatal(err)
	}
	if !v.Tampered || v.ID != "acme" || v.DisplayName != "" || v.Secrets != nil || v.Labels != nil {
		t.Errorf("Get = %+v, want only the ID, marked tampered", v.Account)
	}
	if _, err := h.svc.Get("nope"); !errors.Is(err, accounts.ErrNotFound) {
		t.Errorf("Get(nope): %v, want ErrNotFound", err)
	}
}

// A view is what admins may see: the domain types, no sealed value, data
// key or secret, whichever call returned it.
func TestViewsCarryNoSecret(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	ctx := context.Background()
	var views []accounts.View
	keep := func(v accounts.View, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		views = append(views, v)
	}
	keep(h.svc.Create(ctx, serviceAccount("check", goodSecret), true, event("CreateAccount")))
	keep(h.svc.Create(ctx, serviceAccount("acme", goodSecret), false, event("CreateAccount")))
	h.fake.AddClientSecret(clientID, nextSecret)
	v, _, err := h.svc.AddSecret(ctx, "acme", secret.New(nextSecret), time.Time{}, event("AddAccountSecret"))
	keep(v, err)
	v, _, err = h.svc.AddGrant(ctx, "acme", "spiffe://test/web", grants.Limits{}, "spiffe://test/admin", event("AddGrant"))
	keep(v, err)
	keep(h.svc.Update(ctx, "acme", accounts.Changes{}, event("UpdateAccount")))
	keep(h.svc.Get("acme"))
	list, _, err := list(h.svc, "", 10, nil)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %d accounts, %v", len(list), err)
	}
	views = append(views, list...)

	stored, err := h.store.Account("acme")
	if err != nil || len(stored.Secrets) != 2 || len(stored.WrappedKey) == 0 {
		t.Fatalf("stored account: %d secrets, wrapped key of %d bytes, %v", len(stored.Secrets), len(stored.WrappedKey), err)
	}
	ts, err := h.store.TokenState("acme")
	if err != nil || len(ts.SealedToken) == 0 {
		t.Fatalf("stored token: %d bytes, %v", len(ts.SealedToken), err)
	}
	forbidden := []string{goodSecret, nextSecret, h.fake.LastToken()}
	for _, b := range [][]byte{stored.WrappedKey, stored.Secrets[0].Sealed, stored.Secrets[1].Sealed, ts.SealedToken} {
		forbidden = append(forbidden, fmt.Sprint(b), base64.StdEncoding.EncodeToString(b), hex.EncodeToString(b), string(b))
	}
	if h.fake.LastToken() == "" {
		t.Fatal("the fake issued no token")
	}

	for i, v := range views {
		printed := fmt.Sprintf("%+v", v)
		// What is scanned holds the view (a validate-only one has no secrets).
		if !strings.Contains(printed, v.ID) || i > 0 && !strings.Contains(printed, accounts.SecretID(secret.New(goodSecret))) {
			t.Fatalf("view %d printed without its ID or secret ID: %s", i, printed)
		}
		for _, f := range forbidden {
			if strings.Contains(printed, f) {
				t.Errorf("view %d (%s) shows a secret or sealed value: %s", i, v.ID, printed)
			}
		}
		if !v.Credentials.ClientSecret.IsZero() {
			t.Errorf("view %d carries a client secret", i)
		}
	}
	// No part of a view is a stored record, where sealed values live.
	if p := storedTypeIn(reflect.TypeOf(accounts.View{}), map[reflect.Type]bool{}); p != "" {
		t.Errorf("a view holds a stored record: %s", p)
	}
	var _ accounts.Account = views[0].Account
}

// storedTypeIn names the first type of package store within t, or "".
func storedTypeIn(t reflect.Type, seen map[reflect.Type]bool) string {
	if seen[t] {
		return ""
	}
	seen[t] = true
	if strings.HasSuffix(t.PkgPath(), "/internal/store") {
		return t.String()
	}
	switch t.Kind() {
	case reflect.Pointer, reflect.Slice, reflect.Array:
		return storedTypeIn(t.Elem(), seen)
	case reflect.Map:
		if p := storedTypeIn(t.Key(), seen); p != "" {
			return p
		}
		return storedTypeIn(t.Elem(), seen)
	case reflect.Struct:
		for i := range t.NumField() {
			if p := storedTypeIn(t.Field(i).Type, seen); p != "" {
				return t.Field(i).Name + "." + p
			}
		}
	}
	return ""
}

// SecretID is "sha256:" and the first 12 hex digits of the secret's
// SHA-256, as `printf %s "$SECRET" | sha256sum` shows them.
func TestSecretID(t *testing.T) {
	t.Parallel()
	format := regexp.MustCompile(`^sha256:[0-9a-f]{12}$`)
	cases := []struct{ secret, want string }{
		{"abc", "sha256:ba7816bf8f01"}, // FIPS 180-2's example
		{"", "sha256:e3b0c44298fc"},
		{goodSecret, ""},
		{nextSecret, ""},
		{"ünïcode secret with spaces", ""},
	}
	seen := map[string]string{}
	for _, tc := range cases {
		sum := sha256.Sum256([]byte(tc.secret))
		want := "sha256:" + hex.EncodeToString(sum[:])[:12]
		if tc.want != "" && tc.want != want {
			t.Fatalf("test vector for %q is wrong", tc.secret)
		}
		got := accounts.SecretID(secret.New(tc.secret))
		if got != want || !format.MatchString(got) {
			t.Errorf("SecretID(%q) = %q, want %q", tc.secret, got, want)
		}
		if other, ok := seen[got]; ok {
			t.Errorf("%q and %q share the ID %s", tc.secret, other, got)
		}
		seen[got] = tc.secret
	}
}

// NewID makes distinct ids of one shape.
func TestNewID(t *testing.T) {
	t.Parallel()
	format := regexp.MustCompile(`^acct-[0-9a-f]{12}$`)
	seen := map[string]bool{}
	for range 100 {
		id := accounts.NewID()
		if !format.MatchString(id) || seen[id] {
			t.Fatalf("NewID() = %q (seen before: %v)", id, seen[id])
		}
		seen[id] = true
	}
}

// Indexed is each principal's limits.
func TestIndexed(t *testing.T) {
	t.Parallel()
	gs := []store.Grant{
		{Principal: "spiffe://test/api", HTTPMethods: []string{"GET"}, PathPrefixes: []string{"/systems"}},
		{Principal: "spiffe://test/web"},
	}
	got := accounts.Indexed(gs)
	want := map[string]grants.Limits{
		"spiffe://test/api": {Methods: []string{"GET"}, PathPrefixes: []string{"/systems"}},
		"spiffe://test/web": {},
	}
	if len(got) != len(want) {
		t.Fatalf("Indexed = %v, want %v", got, want)
	}
	for p, l := range want {
		if g, ok := got[p]; !ok || !g.Equal(l) {
			t.Errorf("Indexed[%s] = %v, want %v", p, g, l)
		}
	}
	if got := accounts.Indexed(nil); len(got) != 0 {
		t.Errorf("Indexed(nil) = %v", got)
	}
}

// MigrateSecrets moves an account's one secret of the earlier layout into
// its list of secrets, where the token manager finds it, with one audit
// event per account it changed; other accounts stay as they were.
func TestMigrateSecrets(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.create(t, "current")
	key, wrapped, err := h.keys.NewAccountKey("legacy")
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := key.Seal(keyring.FieldClientSecret, []byte(goodSecret))
	if err != nil {
		t.Fatal(err)
	}
	created := time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)
	legacy := store.Account{ID: "legacy", Provider: string(provider.KindJumpCloudServiceAccount), ClientID: clientID, Region: provider.RegionUS,
		WrappedKey: wrapped, SealedSecret: sealed, CreateTime: created, UpdateTime: created}
	if err := h.store.CreateAccount(legacy, store.TokenState{State: string(tokens.StateActive)}, event("CreateAccount")); err != nil {
		t.Fatal(err)
	}
	before, err := h.store.Account("current")
	if err != nil {
		t.Fatal(err)
	}
	all, err := h.store.All()
	if err != nil || len(all) != 2 {
		t.Fatalf("All: %d accounts, %v", len(all), err)
	}
	events := len(h.audit(t))

	ev := event("MigrateSecrets")
	ev.Principal = "credbroker"
	got, err := h.svc.MigrateSecrets(all, ev)
	if err != nil {
		t.Fatal(err)
	}

	id := accounts.SecretID(secret.New(goodSecret))
	wantSecrets := []store.Secret{{ID: id, Sealed: sealed, CreateTime: created}}
	for _, a := range []store.Account{got[1].Account, h.account(t, "legacy")} {
		if a.ID != "legacy" || a.SealedSecret != nil || !reflect.DeepEqual(a.Secrets, wantSecrets) {
			t.Errorf("migrated account %s: secrets %+v, old secret %d bytes; want %+v and none", a.ID, a.Secrets, len(a.SealedSecret), wantSecrets)
		}
	}
	if after := h.account(t, "current"); !reflect.DeepEqual(after, before) || !reflect.DeepEqual(got[0].Account, before) {
		t.Errorf("the current account changed: %+v, was %+v", after, before)
	}
	evs := h.audit(t)
	if len(evs) != events+1 || evs[0].Resource != audit.AccountName("legacy") || evs[0].Detail != "secret kept as "+id || evs[0].Method != "MigrateSecrets" {
		t.Errorf("audit trail: %d new events, newest %+v; want one for %s", len(evs)-events, evs[0], audit.AccountName("legacy"))
	}
	// The token manager uses the secret where it now is.
	h.tokens.Replace(got)
	if _, err := h.tokens.Get(context.Background(), "legacy", 0); err != nil {
		t.Errorf("GetToken with the migrated secret: %v", err)
	}
	// Migrating again changes nothing.
	again, err := h.store.All()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc.MigrateSecrets(again, ev); err != nil || len(h.audit(t)) != events+1 {
		t.Errorf("second migration: %v, %d new events", err, len(h.audit(t))-events)
	}
}

// account is the stored account, or fails the test.
func (h *harness) account(t *testing.T, id string) store.Account {
	t.Helper()
	a, err := h.store.Account(id)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
