// Package accounts links accounts and manages them: it proves credentials
// with the provider before anything is stored, seals the secret under a new
// per-account data key, and keeps the token manager in step with the store.
package accounts

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/seal"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Errors, besides those of the provider (*provider.RejectedError,
// *provider.UnavailableError).
var (
	ErrNotFound      = store.ErrNotFound
	ErrAlreadyExists = store.ErrExists
	ErrNoSuchGrant   = errors.New("the account has no grant for this principal")
)

// Service manages accounts, keeping the token manager and the grants index
// in step with the store.
type Service struct {
	store    *store.Store
	master   *seal.MasterKey
	provider *provider.Client
	tokens   *tokens.Manager
	grants   *grants.Index
	now      func() time.Time

	// grantsMu makes each store write that changes grants, and the index
	// update after it, one step, so the index never goes back in time.
	grantsMu sync.Mutex
}

// New returns a Service.
func New(st *store.Store, master *seal.MasterKey, prov *provider.Client, tm *tokens.Manager, gi *grants.Index) *Service {
	return &Service{store: st, master: master, provider: prov, tokens: tm, grants: gi, now: time.Now}
}

// LoadGrants fills the grants index from the stored accounts (store.All).
func (s *Service) LoadGrants(all []store.Stored) {
	for _, st := range all {
		s.grants.Set(st.Account.ID, principals(st.Account.Grants))
	}
}

func principals(gs []store.Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.Principal
	}
	return out
}

// NewAccount is a validated request to link an account.
type NewAccount struct {
	// ID is generated when empty.
	ID          string
	DisplayName string
	Labels      map[string]string
	Credentials provider.Credentials
}

// View is an account as shown: its record (whose sealed fields must not be
// shown), its effective endpoints and its token health.
type View struct {
	store.Account
	TokenURL   string
	APIBaseURL string
	Status     tokens.Status
}

// Create is the "Connect" step: it fetches a token with the credentials and
// only then stores the account (unless validateOnly), with ev, its audit
// event. On any error nothing is stored.
func (s *Service) Create(ctx context.Context, in NewAccount, validateOnly bool, ev store.AuditEvent) (View, error) {
	if _, err := s.store.Account(in.ID); err == nil {
		return View{}, ErrAlreadyExists
	} else if !errors.Is(err, store.ErrNotFound) {
		return View{}, err
	}
	cr := in.Credentials
	var tok provider.Token
	var err error
	if cr.Kind == provider.KindJumpCloudAPIKey {
		err = s.provider.CheckAPIKey(ctx, cr)
	} else {
		tok, err = s.provider.Fetch(ctx, cr)
	}
	if err != nil {
		return View{}, err
	}
	if err := ctx.Err(); err != nil {
		return View{}, err // the caller gave up: do not store behind its back
	}

	now := s.now()
	a := store.Account{
		ID: in.ID, DisplayName: in.DisplayName, Labels: in.Labels,
		Provider: cr.Kind, ClientID: cr.ClientID, Region: cr.Region, OrgID: cr.OrgID,
		TokenURL: cr.TokenURL, Scopes: cr.Scopes, AuthStyle: cr.AuthStyle,
		EndpointParams: cr.EndpointParams, APIBaseURL: cr.APIBaseURL,
		CreateTime: now, UpdateTime: now,
	}
	status := tokens.Status{State: tokens.StateActive, LastTokenTime: tok.Obtained}
	if validateOnly {
		a.CreateTime, a.UpdateTime = time.Time{}, time.Time{}
		return s.view(a, status), nil
	}

	key, wrapped, err := s.master.NewDataKey(a.ID)
	if err != nil {
		return View{}, err
	}
	a.WrappedKey = wrapped
	if a.SealedSecret, err = key.Seal(store.FieldClientSecret, []byte(cr.ClientSecret.Reveal())); err != nil {
		return View{}, err
	}
	ts := store.TokenState{State: tokens.StateActive}
	if !tok.AccessToken.IsZero() {
		sealedToken, err := tokens.SealToken(key, tok)
		if err != nil {
			return View{}, err
		}
		ts.SealedToken, ts.TokenType, ts.Expiry, ts.Obtained = sealedToken, tok.TokenType, tok.Expiry, tok.Obtained
	}
	if err := s.store.CreateAccount(a, ts, ev); err != nil {
		return View{}, err
	}
	s.tokens.Add(a, ts)
	return s.view(a, status), nil
}

// Get returns one account.
func (s *Service) Get(id string) (View, error) {
	a, err := s.store.Account(id)
	if err != nil {
		return View{}, err
	}
	return s.currentView(a), nil
}

// List returns up to limit accounts after the given id that keep accepts
// (all if keep is nil), in id order, and whether more follow.
func (s *Service) List(after string, limit int, keep func(View) bool) ([]View, bool, error) {
	chunk := max(limit+1, 100)
	var views []View
	for {
		list, err := s.store.Accounts(after, chunk)
		if err != nil {
			return nil, false, err
		}
		for _, a := range list {
			v := s.currentView(a)
			if keep != nil && !keep(v) {
				continue
			}
			if len(views) == limit {
				return views, true, nil
			}
			views = append(views, v)
		}
		if len(list) < chunk {
			return views, false, nil
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
func (s *Service) Update(id string, c Changes, ev store.AuditEvent) (View, error) {
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
	return s.currentView(a), nil
}

// Delete removes an account with its data key, so its sealed secret and
// tokens can no longer be decrypted, stops serving its tokens and drops its
// grants, recording ev with the change.
func (s *Service) Delete(id string, ev store.AuditEvent) error {
	s.grantsMu.Lock()
	defer s.grantsMu.Unlock()
	if err := s.store.DeleteAccount(id, ev); err != nil {
		return err
	}
	s.grants.Remove(id)
	s.tokens.Remove(id)
	return nil
}

// AddGrant lets principal get the account's tokens, recording ev with the
// change. It reports false, recording nothing, if the grant exists already.
func (s *Service) AddGrant(id, principal, creator string, ev store.AuditEvent) (View, bool, error) {
	return s.changeGrants(id, ev, func(gs []store.Grant) ([]store.Grant, error) {
		if slices.ContainsFunc(gs, func(g store.Grant) bool { return g.Principal == principal }) {
			return nil, errUnchanged
		}
		gs = append(gs, store.Grant{Principal: principal, CreateTime: s.now(), Creator: creator})
		slices.SortFunc(gs, func(a, b store.Grant) int { return cmp.Compare(a.Principal, b.Principal) })
		return gs, nil
	})
}

// RemoveGrant withdraws principal's grant, recording ev with the change.
func (s *Service) RemoveGrant(id, principal string, ev store.AuditEvent) (View, error) {
	v, _, err := s.changeGrants(id, ev, func(gs []store.Grant) ([]store.Grant, error) {
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

func (s *Service) changeGrants(id string, ev store.AuditEvent, change func([]store.Grant) ([]store.Grant, error)) (View, bool, error) {
	s.grantsMu.Lock()
	defer s.grantsMu.Unlock()
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
	s.grants.Set(a.ID, principals(a.Grants))
	return s.currentView(a), true, nil
}

func (s *Service) currentView(a store.Account) View {
	status, _ := s.tokens.Status(a.ID)
	return s.view(a, status)
}

func (s *Service) view(a store.Account, status tokens.Status) View {
	desc := tokens.Describe(a)
	return View{Account: a, TokenURL: s.provider.TokenURL(desc), APIBaseURL: s.provider.APIBaseURL(desc), Status: status}
}

// NewID makes an account id for callers that do not choose one.
func NewID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "acct-" + hex.EncodeToString(b)
}
