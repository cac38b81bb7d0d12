// Package signin links accounts whose users sign in at their provider by
// redirect (OAuth 2.0 authorization code with PKCE): it sends the browser
// to the provider's sign-in page with a state that names the sign-in and a
// PKCE challenge, and, when the browser comes back with a code, checks the
// state (known, not expired, not used, from the browser that started it),
// exchanges the code with the PKCE verifier, and links the account, or
// gives an existing one its new tokens (a reconnect).
//
// The state and the cookie that binds the sign-in to its browser are
// random; the storage holds only keyed hashes of them, and the verifier is
// derived from the state with the broker's MAC key, so it is never stored.
package signin

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// TTL is how long a sign-in may take.
const TTL = 10 * time.Minute

// CallbackPath is where the provider sends the browser back, below the
// Hub's address: the redirect URI to register with the provider.
const CallbackPath = "/oauth2/callback"

var (
	// ErrAccountChanged: the reconnected account was deleted or linked
	// anew while its user signed in.
	ErrAccountChanged = grpcerr.New(codes.FailedPrecondition, "the account changed while you signed in (it was deleted, or linked anew): nothing was sent to the provider; open its page and reconnect again")
	// ErrCodeRefused: the provider refused the code it sent back.
	ErrCodeRefused = grpcerr.New(codes.FailedPrecondition, "the provider refused the code it sent back (invalid_grant): the sign-in may have been answered twice, or tampered with; start it again")
	// ErrNoCode: the provider sent the browser back with neither a code
	// nor an error.
	ErrNoCode = grpcerr.New(codes.InvalidArgument, "the provider sent you back without a code: start the sign-in again")
	// ErrUnknown: no such sign-in under way.
	ErrUnknown = grpcerr.New(codes.NotFound, "this sign-in is unknown, took longer than 10 minutes, or was finished already (the provider's answer came twice): start it again")
	// ErrOtherBrowser: the answer came to another browser than the one
	// that started the sign-in.
	ErrOtherBrowser = grpcerr.New(codes.PermissionDenied, "this sign-in was started in another browser, or its admin signed out meanwhile: start it again in this browser")
)

// ProviderError is the provider's answer that it did not let the user in
// (error=access_denied, say), sanitized.
type ProviderError struct{ Code, Description string }

func (e *ProviderError) Error() string {
	msg := "the provider did not sign you in: " + e.Code
	if e.Description != "" {
		msg += " (" + e.Description + ")"
	}
	return msg + "; nothing was linked"
}

func (e *ProviderError) GRPCStatus() *status.Status {
	return status.New(codes.FailedPrecondition, e.Error())
}

// Store is what sign-ins keep.
type Store interface {
	Account(id string) (store.Account, error)
	CreateAuthorization(hash string, a store.Authorization, now time.Time, ev store.AuditEvent) error
	TakeAuthorization(hash string, check func(store.Authorization) error) (store.Authorization, error)
}

// Service starts and finishes sign-ins.
type Service struct {
	store    Store
	keys     *keyring.Keyring
	mac      *keyring.MACKey
	provider *provider.Client
	accounts *accounts.Service
	now      func() time.Time
}

func New(st Store, keys *keyring.Keyring, mac *keyring.MACKey, prov *provider.Client, acc *accounts.Service, now func() time.Time) *Service {
	return &Service{store: st, keys: keys, mac: mac, provider: prov, accounts: acc, now: now}
}

// Start is a sign-in to start: a new account (validated, its client
// secret in its credentials, or sealed in App, a connect link's), or a
// reconnect of account Reconnect.
type Start struct {
	Account   accounts.NewAccount
	App       *store.SignInApp
	Reconnect string
	// Principal starts it: a Hub admin, or a connect link (whose hash is
	// ConnectHash).
	Principal, ConnectHash string
	// HubURL is where browsers reach the Hub.
	HubURL string
}

// Begin stores a sign-in, with ev, and returns where to send the browser
// and the cookie value that binds the sign-in to it.
func (s *Service) Begin(in Start, ev store.AuditEvent) (to, cookie string, err error) {
	state, cookie := random(), random()
	now := s.now()
	a := store.Authorization{
		AccountID: in.Account.ID, DisplayName: in.Account.DisplayName, Principal: in.Principal, ConnectHash: in.ConnectHash,
		BrowserHash: s.hash("signin-browser", cookie), RedirectURI: in.HubURL + CallbackPath,
		SecretExpireTime: in.Account.SecretExpireTime, ExpireTime: now.Add(TTL),
	}
	switch {
	case in.Reconnect != "":
		stored, err := s.store.Account(in.Reconnect)
		if err != nil {
			return "", "", err
		}
		if provider.Kind(stored.Provider) != provider.KindOAuth2AuthorizationCode {
			return "", "", accounts.ErrNotAuthorizationCode
		}
		a.AccountID, a.Reconnect, a.ReconnectOf, a.DisplayName = stored.ID, true, stored.CreateTime, stored.DisplayName
		a.App = AppOf(tokens.Describe(stored)) // its client secret stays in the account
	case in.App != nil:
		a.App = *in.App
	default:
		if a.App, err = SealApp(s.keys, pendingKeyID(a.AccountID), in.Account.Credentials); err != nil {
			return "", "", err
		}
	}
	if !a.Reconnect {
		if _, err := s.store.Account(a.AccountID); err == nil {
			return "", "", accounts.ErrAlreadyExists
		} else if !errors.Is(err, store.ErrNotFound) {
			return "", "", err
		}
	}
	cr := Credentials(a.App)
	ev.Detail = "sign-in at " + host(cr.AuthURL) + " started"
	if err := s.store.CreateAuthorization(s.hash("signin-state", state), a, now, ev); err != nil {
		return "", "", err
	}
	return provider.AuthorizationURL(cr, a.RedirectURI, state, s.verifier(state)), cookie, nil
}

// AppOf is the app of an account's settings, without its client secret.
func AppOf(cr provider.Credentials) store.SignInApp {
	return store.SignInApp{
		AuthURL: cr.AuthURL, TokenURL: cr.TokenURL, ClientID: cr.ClientID, Scopes: cr.Scopes, AuthParams: cr.AuthParams,
		AuthStyle: cr.AuthStyle, APIBaseURL: cr.APIBaseURL, DefaultLifetime: cr.DefaultLifetime,
	}
}

// SealApp is the app of cr with its client secret sealed under a new data
// key bound to keyID.
func SealApp(keys *keyring.Keyring, keyID string, cr provider.Credentials) (store.SignInApp, error) {
	app := AppOf(cr)
	key, wrapped, err := keys.NewAccountKey(keyID)
	if err != nil {
		return app, err
	}
	app.KeyID, app.WrappedKey = keyID, wrapped
	app.SealedClientSecret, err = key.Seal(keyring.FieldClientSecret, []byte(cr.ClientSecret.Reveal()))
	return app, err
}

// Credentials are the settings of app, without its client secret.
func Credentials(app store.SignInApp) provider.Credentials {
	return provider.Credentials{
		Kind: provider.KindOAuth2AuthorizationCode, AuthURL: app.AuthURL, TokenURL: app.TokenURL, ClientID: app.ClientID, Scopes: app.Scopes,
		AuthParams: app.AuthParams, AuthStyle: app.AuthStyle, APIBaseURL: app.APIBaseURL, DefaultLifetime: app.DefaultLifetime,
	}
}

// Pending is a sign-in the browser came back from.
type Pending struct {
	store.Authorization
	state string
}

// Take removes the sign-in that state names, so that it is finished once,
// if one of cookies (the sign-in cookies of the browser that came back)
// is the one it was started with; it returns which.
func (s *Service) Take(state string, cookies []string) (Pending, int, error) {
	if state == "" {
		return Pending{}, -1, ErrUnknown
	}
	match := -1
	a, err := s.store.TakeAuthorization(s.hash("signin-state", state), func(a store.Authorization) error {
		if !s.now().Before(a.ExpireTime) {
			return ErrUnknown
		}
		for i, c := range cookies {
			if s.hash("signin-browser", c) == a.BrowserHash {
				match = i
				return nil
			}
		}
		return ErrOtherBrowser // kept, for the browser that started it
	})
	if errors.Is(err, store.ErrNotFound) {
		return Pending{}, -1, ErrUnknown
	}
	return Pending{Authorization: a, state: state}, match, err
}

// Finish exchanges the provider's code and links the account (with ev),
// or gives the account its new tokens on a reconnect.
func (s *Service) Finish(ctx context.Context, p Pending, code string, ev store.AuditEvent) (accounts.View, error) {
	cr := Credentials(p.App)
	if code == "" {
		return accounts.View{}, ErrNoCode
	}
	var err error
	if cr.ClientSecret, err = s.clientSecret(p); err != nil {
		return accounts.View{}, err
	}
	tok, err := s.provider.Exchange(ctx, cr, p.RedirectURI, code, s.verifier(p.state))
	var rejected *provider.RejectedError
	switch {
	case errors.As(err, &rejected) && rejected.Code == "invalid_grant":
		return accounts.View{}, ErrCodeRefused // the client's credentials passed; the code did not
	case errors.As(err, &rejected):
		return accounts.View{}, grpcerr.New(codes.FailedPrecondition, fmt.Sprintf(
			"the provider refused the app's Client ID or Client Secret (%s): nothing was linked; check them and link the account again", rejected.Code))
	}
	if err != nil {
		return accounts.View{}, err
	}
	ev.Detail = "signed in at " + host(cr.AuthURL)
	if p.Reconnect {
		ev.Detail += ": reconnected"
		return s.accounts.Reconnect(ctx, p.AccountID, tok, ev)
	}
	return s.accounts.CreateAuthorized(ctx, accounts.NewAccount{
		ID: p.AccountID, DisplayName: p.DisplayName, Credentials: cr, SecretExpireTime: p.SecretExpireTime,
	}, tok, ev)
}

// ProviderError is the error the provider sent the browser back with, fit
// to show: withheld if it echoes the sign-in's client secret.
func (s *Service) ProviderError(p Pending, code, description string) error {
	sec, _ := s.clientSecret(p)
	code, description = provider.CallbackError(code, description, secret.NewDetector(sec, p.App.ClientID))
	return &ProviderError{Code: code, Description: description}
}

// clientSecret is the client secret a sign-in exchanges its code with:
// the one it was started with (sealed in its app), or the reconnected
// account's newest.
func (s *Service) clientSecret(p Pending) (secret.String, error) {
	if !p.Reconnect {
		raw, err := s.keys.Open(p.App.KeyID, p.App.WrappedKey, keyring.FieldClientSecret, p.App.SealedClientSecret)
		if err != nil {
			return secret.String{}, fmt.Errorf("open the sign-in's client secret: %w", err)
		}
		return secret.New(string(raw)), nil
	}
	a, err := s.store.Account(p.AccountID)
	if err != nil {
		return secret.String{}, err
	}
	if !a.CreateTime.Equal(p.ReconnectOf) || provider.Kind(a.Provider) != provider.KindOAuth2AuthorizationCode ||
		a.TokenURL != p.App.TokenURL || a.ClientID != p.App.ClientID {
		return secret.String{}, ErrAccountChanged
	}
	if len(a.Secrets) == 0 {
		return secret.String{}, fmt.Errorf("account %s has no client secret", a.ID)
	}
	newest := a.Secrets[len(a.Secrets)-1]
	raw, err := s.keys.Open(a.ID, a.WrappedKey, keyring.FieldClientSecret, newest.Sealed)
	if err != nil {
		return secret.String{}, fmt.Errorf("open the account's client secret: %w", err)
	}
	return secret.New(string(raw)), nil
}

// pendingKeyID is what a sign-in's own data key is bound to.
func pendingKeyID(accountID string) string { return "sign-in:" + accountID }

// verifier is the PKCE verifier of a state: only the broker can make it.
func (s *Service) verifier(state string) string {
	return base64.RawURLEncoding.EncodeToString(s.mac.Sum("pkce-verifier", state))
}

func (s *Service) hash(purpose, v string) string { return hex.EncodeToString(s.mac.Sum(purpose, v)) }

func random() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// host is the host of a URL, for audit details.
func host(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "the provider"
	}
	return u.Host
}
