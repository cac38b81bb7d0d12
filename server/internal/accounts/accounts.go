// Package accounts links accounts and manages them: it proves credentials
// with the provider before anything is stored, seals the secret under a new
// per-account data key, and keeps the token manager in step with the store.
package accounts

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Errors, besides those of the provider (*provider.RejectedError,
// *provider.UnavailableError).
var (
	ErrNotFound      = grpcerr.New(codes.NotFound, "account not found")
	ErrAlreadyExists = grpcerr.New(codes.AlreadyExists, "an account with this account_id already exists")
	ErrNoSuchGrant   = grpcerr.New(codes.NotFound, "the account has no grant for this principal")
	ErrSecretExists  = grpcerr.New(codes.AlreadyExists, "the account holds this secret already")
	ErrNoSuchSecret  = grpcerr.New(codes.NotFound, "the account has no secret with this secret_id")
	ErrSecretLimit   = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_SECRET_LIMIT,
		fmt.Sprintf("the account holds %d secrets, the most it can: remove one first", MaxSecrets))
	ErrLastSecret = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_LAST_SECRET,
		"this is the account's only secret, so it cannot be removed: add its successor first, or delete the account")
)

// MaxSecrets is how many secrets an account can hold, as a JumpCloud
// service account can: the current one and its successor.
const MaxSecrets = 2

// Store is what accounts needs of the storage: its records of accounts,
// each change committed with its audit event. *store.Store provides it on
// any storage engine.
type Store interface {
	Account(id string) (store.Account, error)
	Accounts(after string, limit int) ([]store.Account, error)
	CreateAccount(a store.Account, t store.TokenState, ev store.AuditEvent) error
	UpdateAccount(id string, change func(*store.Account) error, ev store.AuditEvent) (store.Account, error)
	DeleteAccount(id string, ev store.AuditEvent) error
}

// named is a Store whose errors name what accounts means by them.
type named struct{ Store }

func rename(err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return ErrNotFound
	case errors.Is(err, store.ErrExists):
		return ErrAlreadyExists
	}
	return err
}

func (n named) Account(id string) (store.Account, error) {
	a, err := n.Store.Account(id)
	return a, rename(err)
}

func (n named) CreateAccount(a store.Account, t store.TokenState, ev store.AuditEvent) error {
	return rename(n.Store.CreateAccount(a, t, ev))
}

func (n named) UpdateAccount(id string, change func(*store.Account) error, ev store.AuditEvent) (store.Account, error) {
	a, err := n.Store.UpdateAccount(id, change, ev)
	return a, rename(err)
}

func (n named) DeleteAccount(id string, ev store.AuditEvent) error {
	return rename(n.Store.DeleteAccount(id, ev))
}

// Service manages accounts. The token cache and the grants index learn of
// its changes from the stream of committed changes (see storage.Mirror):
// each change returns once they hold it.
type Service struct {
	store    Store
	keys     *keyring.Keyring
	provider *provider.Client
	tokens   *tokens.Manager
	// synced waits until the in-memory copies hold every commit made so far.
	synced func(context.Context)
	now    func() time.Time
}

// New returns a Service.
func New(st Store, keys *keyring.Keyring, prov *provider.Client, tm *tokens.Manager, synced func(context.Context)) *Service {
	return &Service{store: named{st}, keys: keys, provider: prov, tokens: tm, synced: synced, now: time.Now}
}

// Indexed is an account's grants as the grants index holds them: nil for
// none, as most of 100,000 accounts may have (an empty map costs 80 bytes).
func Indexed(gs []store.Grant) map[string]grants.Limits {
	if len(gs) == 0 {
		return nil
	}
	out := make(map[string]grants.Limits, len(gs))
	for _, g := range gs {
		out[g.Principal] = limitsOf(g)
	}
	return out
}

func limitsOf(g store.Grant) grants.Limits {
	return grants.Limits{Methods: g.HTTPMethods, PathPrefixes: g.PathPrefixes}
}

// NewAccount is a validated request to link an account.
type NewAccount struct {
	// ID names the account; the API makes one with NewID when the caller
	// chooses none.
	ID          string
	DisplayName string
	Labels      map[string]string
	Credentials provider.Credentials
	// SecretExpireTime is when the provider stops accepting the secret; zero if never.
	SecretExpireTime time.Time
}

// Account is a linked account as admins see it: its provider settings,
// what is known of its secrets, and its grants; never a sealed value or
// its data key, which stay in the stored record (store.Account).
type Account struct {
	ID          string
	DisplayName string
	Labels      map[string]string
	// Credentials are the account's provider settings, as linked, without
	// a secret.
	Credentials provider.Credentials
	// Secrets, oldest first.
	Secrets    []Secret
	Grants     []Grant
	CreateTime time.Time
	UpdateTime time.Time
	// Tampered: a stored record of the account failed its integrity
	// check; only ID is set.
	Tampered bool
}

// Secret is what is known of one of an account's secrets.
type Secret struct {
	// ID is the secret's fingerprint (see SecretID).
	ID         string
	CreateTime time.Time
	// ExpireTime is when the provider stops accepting it; zero if never.
	ExpireTime time.Time
}

// Grant lets a principal get the account's tokens or, within its limits,
// call its API through the egress proxy.
type Grant struct {
	Principal  string
	CreateTime time.Time
	Creator    string
	Limits     grants.Limits
}

// accountOf maps a stored account to what admins see of it.
func accountOf(r store.Account) Account {
	a := Account{
		ID: r.ID, DisplayName: r.DisplayName, Labels: r.Labels, Credentials: tokens.Describe(r),
		CreateTime: r.CreateTime, UpdateTime: r.UpdateTime, Tampered: r.Tampered,
	}
	for _, sec := range r.Secrets {
		a.Secrets = append(a.Secrets, Secret{ID: sec.ID, CreateTime: sec.CreateTime, ExpireTime: sec.ExpireTime})
	}
	for _, g := range r.Grants {
		a.Grants = append(a.Grants, Grant{Principal: g.Principal, CreateTime: g.CreateTime, Creator: g.Creator, Limits: limitsOf(g)})
	}
	return a
}

// View is an account as shown: the account, its effective endpoints and
// its token health.
type View struct {
	Account
	TokenURL   string
	APIBaseURL string
	Status     tokens.Status
	Expiry     tokens.Expiry
}

// Create is the "Connect" step: it fetches a token with the credentials and
// only then stores the account (unless validateOnly), with ev, its audit
// event. On any error nothing is stored.
func (s *Service) Create(ctx context.Context, in NewAccount, validateOnly bool, ev store.AuditEvent) (View, error) {
	if _, err := s.store.Account(in.ID); err == nil {
		return View{}, ErrAlreadyExists
	} else if !errors.Is(err, ErrNotFound) {
		return View{}, err
	}
	cr := in.Credentials
	tok, err := s.prove(ctx, cr)
	if err != nil {
		return View{}, err
	}
	if err := ctx.Err(); err != nil {
		return View{}, err // the caller gave up: do not store behind its back
	}
	return s.keep(ctx, in, tok, validateOnly, ev)
}

// CreateAuthorized stores an authorization-code account whose user signed
// in at the provider: tok is the provider's answer to the code, with the
// refresh token that is stored sealed with it.
func (s *Service) CreateAuthorized(ctx context.Context, in NewAccount, tok provider.Token, ev store.AuditEvent) (View, error) {
	if _, err := s.store.Account(in.ID); err == nil {
		return View{}, ErrAlreadyExists
	} else if !errors.Is(err, ErrNotFound) {
		return View{}, err
	}
	return s.keep(ctx, in, tok, false, ev)
}

// ErrNotAuthorizationCode: only an authorization-code account reconnects.
var ErrNotAuthorizationCode = grpcerr.New(codes.FailedPrecondition, "only an account whose users sign in by redirect (OAuth 2.0 authorization code) reconnects")

// Reconnect gives an authorization-code account whose user signed in at
// the provider again the provider's new tokens, its refresh token first
// of all, keeping its name, secrets and grants: it is active again.
func (s *Service) Reconnect(ctx context.Context, id string, tok provider.Token, ev store.AuditEvent) (View, error) {
	a, err := s.store.Account(id)
	if err != nil {
		return View{}, err
	}
	if provider.Kind(a.Provider) != provider.KindOAuth2AuthorizationCode {
		return View{}, ErrNotAuthorizationCode
	}
	err = s.useToken(ctx, id, tok, "", &ev)
	if err != nil {
		return View{}, rename(err)
	}
	s.synced(ctx)
	return s.Get(id)
}

// useToken makes tok, got outside a refresh (a reconnect's, a new secret's
// proof), the account's token, and the account active again; with the
// refresh token that came with it, if any, and as the last use of secret
// secretID, if set. It waits until a refresh under way has stored its
// outcome (with the old credentials), and stores tok as obtained now, so
// that such a refresh's token is never taken for the newer.
func (s *Service) useToken(ctx context.Context, id string, tok provider.Token, secretID string, ev *store.AuditEvent) error {
	return s.tokens.NewGrant(ctx, id, func(lock *store.RefreshLock) error {
		return lock.UpdateTokenState(func(ts *store.TokenState, wrapped []byte) error {
			sealed, err := s.keys.Seal(id, wrapped, keyring.FieldAccessToken, []byte(tok.AccessToken.Reveal()))
			if err != nil {
				return err
			}
			if !tok.RefreshToken.IsZero() {
				if ts.SealedRefreshToken, err = s.keys.Seal(id, wrapped, keyring.FieldRefreshToken, []byte(tok.RefreshToken.Reveal())); err != nil {
					return err
				}
			}
			now := s.now()
			ts.SealedToken, ts.TokenType, ts.Expiry, ts.Obtained = sealed, tok.TokenType, tok.Expiry, now
			ts.State, ts.LastError = string(tokens.StateActive), nil
			if secretID != "" {
				ts.SecretUse = maps.Clone(ts.SecretUse)
				if ts.SecretUse == nil {
					ts.SecretUse = map[string]store.SecretUse{}
				}
				ts.SecretUse[secretID] = store.SecretUse{LastUsed: tok.Obtained}
			}
			return nil
		}, ev)
	})
}

// ErrSecretBySignIn: an account whose users sign in by redirect gets a new
// client secret by being linked again.
var ErrSecretBySignIn = grpcerr.New(codes.FailedPrecondition,
	"an account whose users sign in by redirect cannot prove a second client secret on its own: delete it and link it again with the new one")

// keep stores a new account with its proven token.
func (s *Service) keep(ctx context.Context, in NewAccount, tok provider.Token, validateOnly bool, ev store.AuditEvent) (View, error) {
	cr := in.Credentials
	now := s.now()
	a := store.Account{
		ID: in.ID, DisplayName: in.DisplayName, Labels: in.Labels,
		Provider: string(cr.Kind), ClientID: cr.ClientID, Region: cr.Region, OrgID: cr.OrgID,
		TokenURL: cr.TokenURL, Scopes: cr.Scopes, AuthStyle: cr.AuthStyle,
		EndpointParams: cr.EndpointParams, APIBaseURL: cr.APIBaseURL,
		AuthURL: cr.AuthURL, AuthParams: cr.AuthParams, DefaultLifetime: cr.DefaultLifetime,
		CreateTime: now, UpdateTime: now,
	}
	status := tokens.Status{State: tokens.StateActive, LastTokenTime: tok.Obtained}
	if validateOnly {
		a.CreateTime, a.UpdateTime = time.Time{}, time.Time{}
		return s.view(a, status), nil
	}

	key, wrapped, err := s.keys.NewAccountKey(a.ID)
	if err != nil {
		return View{}, err
	}
	a.WrappedKey = wrapped
	sealed, err := key.Seal(keyring.FieldClientSecret, []byte(cr.ClientSecret.Reveal()))
	if err != nil {
		return View{}, err
	}
	a.Secrets = []store.Secret{{ID: SecretID(cr.ClientSecret), Sealed: sealed, CreateTime: now, ExpireTime: in.SecretExpireTime}}
	ts := store.TokenState{State: string(tokens.StateActive)}
	if !tok.AccessToken.IsZero() {
		ts.SecretUse = map[string]store.SecretUse{a.Secrets[0].ID: {LastUsed: tok.Obtained}}
		status.SecretUse = tokens.SecretUses{{ID: a.Secrets[0].ID, LastUsed: tok.Obtained}}
		sealedToken, err := tokens.SealToken(key, tok)
		if err != nil {
			return View{}, err
		}
		ts.SealedToken, ts.TokenType, ts.Expiry, ts.Obtained = sealedToken, tok.TokenType, tok.Expiry, tok.Obtained
	}
	if !tok.RefreshToken.IsZero() {
		if ts.SealedRefreshToken, err = key.Seal(keyring.FieldRefreshToken, []byte(tok.RefreshToken.Reveal())); err != nil {
			return View{}, err
		}
	}
	if err := s.store.CreateAccount(a, ts, ev); err != nil {
		return View{}, err
	}
	s.synced(ctx)
	return s.view(a, status), nil
}

// AddSecret proves a new secret with the provider and, only if that works,
// adds it to the account, recording ev with the change. It returns the
// account and the new secret's ID.
func (s *Service) AddSecret(ctx context.Context, id string, sec secret.String, expire time.Time, ev store.AuditEvent) (View, string, error) {
	a, err := s.store.Account(id)
	if err != nil {
		return View{}, "", err
	}
	secretID := SecretID(sec)
	if err := canAddSecret(a, secretID); err != nil {
		return View{}, "", err
	}
	cr := tokens.Describe(a)
	if cr.Kind == provider.KindOAuth2AuthorizationCode {
		return View{}, "", ErrSecretBySignIn
	}
	cr.ClientSecret = sec
	tok, err := s.prove(ctx, cr)
	if err != nil {
		return View{}, "", err
	}
	if err := ctx.Err(); err != nil {
		return View{}, "", err
	}
	ev.Detail = "add secret " + secretID
	a, err = s.store.UpdateAccount(id, func(a *store.Account) error {
		if err := canAddSecret(*a, secretID); err != nil { // another admin was quicker
			return err
		}
		// Sealed with the data key read here: a master-key rotation
		// may have given the account a new one since the proof.
		sealed, err := s.keys.Seal(a.ID, a.WrappedKey, keyring.FieldClientSecret, []byte(sec.Reveal()))
		if err != nil {
			return err
		}
		now := s.now()
		a.Secrets = append(a.Secrets, store.Secret{ID: secretID, Sealed: sealed, CreateTime: now, ExpireTime: expire})
		a.UpdateTime = now
		return nil
	}, ev)
	if err != nil {
		return View{}, "", err
	}
	if !tok.AccessToken.IsZero() {
		// The proof's token: the account works again now, not at its next
		// refresh. The secret is stored already; if this fails, that
		// refresh does it.
		_ = s.useToken(ctx, id, tok, secretID, nil)
	}
	s.synced(ctx)
	return s.currentView(a), secretID, nil
}

func canAddSecret(a store.Account, secretID string) error {
	switch {
	case slices.ContainsFunc(a.Secrets, func(s store.Secret) bool { return s.ID == secretID }):
		return ErrSecretExists
	case len(a.Secrets) >= MaxSecrets:
		return ErrSecretLimit
	}
	return nil
}

// RemoveSecret removes one of the account's secrets, recording ev with the change.
func (s *Service) RemoveSecret(ctx context.Context, id, secretID string, ev store.AuditEvent) (View, error) {
	ev.Detail = "remove secret " + secretID
	a, err := s.store.UpdateAccount(id, func(a *store.Account) error {
		i := slices.IndexFunc(a.Secrets, func(s store.Secret) bool { return s.ID == secretID })
		switch {
		case i < 0:
			return ErrNoSuchSecret
		case len(a.Secrets) == 1:
			return ErrLastSecret
		}
		a.Secrets = slices.Delete(a.Secrets, i, i+1)
		a.UpdateTime = s.now()
		return nil
	}, ev)
	if err != nil {
		return View{}, err
	}
	s.synced(ctx)
	return s.currentView(a), nil
}

// prove checks credentials with the provider: it fetches a token, or for an
// API key (which has none; the zero Token) calls the API.
func (s *Service) prove(ctx context.Context, cr provider.Credentials) (provider.Token, error) {
	if cr.Kind == provider.KindJumpCloudAPIKey {
		return provider.Token{}, provider.Entered(s.provider.CheckAPIKey(ctx, cr), cr.Kind)
	}
	tok, err := s.provider.Fetch(ctx, cr)
	return tok, provider.Entered(err, cr.Kind)
}

// Get returns one account. An account whose stored records fail their
// integrity check is shown with only its ID and its state.
func (s *Service) Get(id string) (View, error) {
	a, err := s.store.Account(id)
	if errors.Is(err, store.ErrIntegrity) {
		a, err = store.Account{ID: id, Tampered: true}, nil
	}
	if err != nil {
		return View{}, err
	}
	return s.currentView(a), nil
}

// List calls add with up to limit accounts after the given id that keep
// accepts (all if keep is nil), in id order, and says whether more
// follow. One at a time: a page's views, gathered, were a sixth of a
// listing's garbage.
func (s *Service) List(after string, limit int, keep func(View) bool, add func(View)) (more bool, err error) {
	chunk := max(limit+1, 100)
	for added := 0; ; {
		list, err := s.store.Accounts(after, chunk)
		if err != nil {
			return false, err
		}
		for _, a := range list {
			v := s.currentView(a)
			if keep != nil && !keep(v) {
				continue
			}
			if added == limit {
				return true, nil
			}
			add(v)
			added++
		}
		if len(list) < chunk {
			return false, nil
		}
		after = list[len(list)-1].ID
	}
}

// Changes are the mutable fields an update sets; nil means unchanged.
type Changes struct {
	DisplayName *string
	Labels      *map[string]string
}

// Update applies changes to an account, recording ev with them.
func (s *Service) Update(ctx context.Context, id string, c Changes, ev store.AuditEvent) (View, error) {
	a, err := s.store.UpdateAccount(id, func(a *store.Account) error {
		if c.DisplayName != nil {
			a.DisplayName = *c.DisplayName
		}
		if c.Labels != nil {
			a.Labels = *c.Labels
		}
		a.UpdateTime = s.now()
		return nil
	}, ev)
	if err != nil {
		return View{}, err
	}
	s.synced(ctx)
	return s.currentView(a), nil
}

// Delete removes an account with its data key, so its sealed secret and
// tokens can no longer be decrypted, stops serving its tokens and drops its
// grants, recording ev with the change.
func (s *Service) Delete(ctx context.Context, id string, ev store.AuditEvent) error {
	if err := s.store.DeleteAccount(id, ev); err != nil {
		return err
	}
	s.synced(ctx)
	return nil
}

// AddGrant lets principal use the account within limits (validated:
// sorted, without duplicates), recording ev with the change. If the
// principal has a grant already, its limits are replaced; if they are the
// same, AddGrant reports false and records nothing.
func (s *Service) AddGrant(ctx context.Context, id, principal string, limits grants.Limits, creator string, ev store.AuditEvent) (View, bool, error) {
	return s.changeGrants(ctx, id, ev, func(gs []store.Grant) ([]store.Grant, error) {
		i := slices.IndexFunc(gs, func(g store.Grant) bool { return g.Principal == principal })
		if i < 0 {
			gs = append(gs, store.Grant{Principal: principal, CreateTime: s.now(), Creator: creator, HTTPMethods: limits.Methods, PathPrefixes: limits.PathPrefixes})
			slices.SortFunc(gs, func(a, b store.Grant) int { return cmp.Compare(a.Principal, b.Principal) })
			return gs, nil
		}
		if limitsOf(gs[i]).Equal(limits) {
			return nil, errUnchanged
		}
		gs[i].HTTPMethods, gs[i].PathPrefixes = limits.Methods, limits.PathPrefixes
		return gs, nil
	})
}

// RemoveGrant withdraws principal's grant, recording ev with the change.
func (s *Service) RemoveGrant(ctx context.Context, id, principal string, ev store.AuditEvent) (View, error) {
	v, _, err := s.changeGrants(ctx, id, ev, func(gs []store.Grant) ([]store.Grant, error) {
		i := slices.IndexFunc(gs, func(g store.Grant) bool { return g.Principal == principal })
		if i < 0 {
			return nil, ErrNoSuchGrant
		}
		return slices.Delete(gs, i, i+1), nil
	})
	return v, err
}

// errUnchanged stops a grant change that would change nothing.
var errUnchanged = errors.New("unchanged")

func (s *Service) changeGrants(ctx context.Context, id string, ev store.AuditEvent, change func([]store.Grant) ([]store.Grant, error)) (View, bool, error) {
	a, err := s.store.UpdateAccount(id, func(a *store.Account) error {
		gs, err := change(slices.Clone(a.Grants))
		if err != nil {
			return err
		}
		a.Grants, a.UpdateTime = gs, s.now()
		return nil
	}, ev)
	if errors.Is(err, errUnchanged) {
		got, err := s.Get(id)
		return got, false, err
	}
	if err != nil {
		return View{}, false, err
	}
	s.synced(ctx)
	return s.currentView(a), true, nil
}

func (s *Service) currentView(a store.Account) View {
	status, _ := s.tokens.Status(a.ID)
	return s.view(a, status)
}

func (s *Service) view(a store.Account, status tokens.Status) View {
	desc := tokens.Describe(a)
	return View{
		Account: accountOf(a), TokenURL: s.provider.TokenURL(desc), APIBaseURL: s.provider.APIBaseURL(desc),
		Status: status, Expiry: s.tokens.Expiry(a.Secrets, status.SecretUse),
	}
}

// SecretID names a secret without revealing it: "sha256:" and the first 12
// hex digits of its SHA-256, which an admin holding the secret can compute
// (printf %s "$SECRET" | sha256sum) to tell two secrets apart.
func SecretID(s secret.String) string {
	sum := sha256.Sum256([]byte(s.Reveal()))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// MigrateSecrets moves the one secret of accounts stored before accounts
// could hold two into the list of secrets, recording ev (with the account
// as its resource) for each, and returns the accounts as they now are.
func (s *Service) MigrateSecrets(all []store.Stored, ev store.AuditEvent) ([]store.Stored, error) {
	for i, st := range all {
		a := st.Account
		if len(a.SealedSecret) == 0 || a.Tampered {
			continue
		}
		raw, err := s.keys.Open(a.ID, a.WrappedKey, keyring.FieldClientSecret, a.SealedSecret)
		if err != nil {
			return nil, fmt.Errorf("account %s: open secret: %w", a.ID, err)
		}
		secretID := SecretID(secret.New(string(raw)))
		ev.Resource, ev.Detail = audit.AccountName(a.ID), "secret kept as "+secretID
		all[i].Account, err = s.store.UpdateAccount(a.ID, func(a *store.Account) error {
			a.Secrets = append(a.Secrets, store.Secret{ID: secretID, Sealed: a.SealedSecret, CreateTime: a.CreateTime})
			a.SealedSecret = nil
			return nil
		}, ev)
		if err != nil {
			return nil, err
		}
	}
	return all, nil
}

// NewID makes an account id for callers that do not choose one.
func NewID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "acct-" + hex.EncodeToString(b)
}
