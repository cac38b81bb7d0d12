// Package tokens caches each account's access token, fetches a new one when
// needed (concurrent callers share one upstream request), renews tokens in
// the background before they expire, and tracks each account's health.
//
// GetToken's hot path is a map lookup and an atomic load: no locks held
// across I/O, no store access. API-key accounts have no token: their key is
// opened once, when the account is loaded, and only the egress proxy gets
// it (Credential). Every upstream request, whether a caller or
// the refresher wants it, passes one gate per account (nextAttempt), so a
// failing provider sees backoff, not a retry storm.
package tokens

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/seal"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Account states, as stored and shown.
const (
	StateActive         = "active"
	StateDegraded       = "degraded"
	StateNeedsAttention = "needs_attention"
)

// Failure reasons, as stored and shown.
const (
	ReasonCredentialsRejected = "credentials_rejected"
	ReasonProviderUnavailable = "provider_unavailable"
	ReasonInternal            = "internal"
	ReasonSecretExpired       = "secret_expired"
	ReasonIntegrity           = "integrity_check_failed"
	ReasonProviderRedirected  = "provider_redirected"
)

// ErrNotFound means the manager knows no such account.
var ErrNotFound = errors.New("account not found")

// ErrProxyOnly means the account holds an API key, which is never handed
// out: only the egress proxy uses it.
var ErrProxyOnly = errors.New("this account holds a long-lived API key, which the broker never hands out: call its API through the egress proxy (/v1/accounts/{account_id}/proxy/...) instead")

// invalidateInterval: an account's token is dropped because an API rejected
// it (see Invalidate) at most once per interval, so that an API answering
// 401 for other reasons cannot make the broker hammer the token endpoint.
const invalidateInterval = 10 * time.Second

// MinTTLTooLongError means the caller asked for a token that outlives
// anything the provider issues.
type MinTTLTooLongError struct{ Max time.Duration }

func (e *MinTTLTooLongError) Error() string {
	return fmt.Sprintf("min_ttl must be less than %s, the lifetime of this provider's tokens", e.Max.Round(time.Second))
}

// RefreshLimitedError means a caller's min_ttl would force a new token
// (the cached one is still valid) but the account's last forced refresh
// was less than Config.ForcedInterval ago: callers cannot make the
// broker hammer the provider.
type RefreshLimitedError struct{ RetryAt time.Time }

func (e *RefreshLimitedError) Error() string {
	return "the cached token does not last min_ttl, and this account's token was refreshed for a min_ttl too recently to do so again; retry later or ask for a shorter min_ttl"
}

// FetchError is a failed token request together with the time before which
// the broker will not ask the provider again. Err is a
// *provider.RejectedError, a *provider.RedirectedError, a
// *provider.UnavailableError, or a broker fault.
type FetchError struct {
	Err     error
	RetryAt time.Time
}

func (e *FetchError) Error() string { return e.Err.Error() }
func (e *FetchError) Unwrap() error { return e.Err }

// Config tunes the manager. Zero values take the documented defaults.
type Config struct {
	// RefreshMargin: the refresher renews a token this long before it
	// expires (at most half its lifetime), less up to a quarter of it at
	// random so that accounts linked together do not refresh together.
	// Default 5m.
	RefreshMargin time.Duration
	// RefreshConcurrency bounds the refresher's simultaneous upstream
	// requests. Default 4.
	RefreshConcurrency int
	// ScanInterval is how often the refresher looks for due work. Default 1s.
	ScanInterval time.Duration
	// BackoffMin and BackoffMax bound the exponential backoff after a
	// provider failure without Retry-After. Defaults 1s and 5m.
	BackoffMin, BackoffMax time.Duration
	// RejectedRecheck is how long to wait before asking again after the
	// provider rejected the credentials. Default 10m.
	RejectedRecheck time.Duration
	// ExpiryWarning: once an account's credentials expire within this
	// window, it shows SECRET_EXPIRING and is warned about once a day
	// (see checkExpiry). Default 7 days, JumpCloud's own notice.
	ExpiryWarning time.Duration
	// ForcedInterval bounds the upstream requests a caller can
	// trigger for an account while the broker has what it needs: at most
	// one token refresh forced by min_ttl, and one check of an API key
	// prompted by an API's answer (APIKeyAnswered), per interval. Default 10s.
	ForcedInterval time.Duration
	// Fingerprint names a token in the audit trail without revealing it;
	// it is computed once per token. Default: no fingerprint.
	Fingerprint func(token string) string
	// OnCacheLookup is told whether each lookup found a cached token that
	// would do (for metrics). Default: nothing.
	OnCacheLookup func(hit bool)
	// Now is the clock; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// DefaultConfig is the configuration New uses for zero fields.
func DefaultConfig() Config {
	return Config{
		RefreshMargin:      5 * time.Minute,
		RefreshConcurrency: 4,
		ScanInterval:       time.Second,
		BackoffMin:         time.Second,
		BackoffMax:         5 * time.Minute,
		RejectedRecheck:    10 * time.Minute,
		ExpiryWarning:      7 * 24 * time.Hour,
		ForcedInterval:     10 * time.Second,
		Fingerprint:        func(string) string { return "" },
		OnCacheLookup:      func(bool) {},
		Now:                time.Now,
		Logger:             slog.Default(),
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	fillDuration(&c.RefreshMargin, d.RefreshMargin)
	fillDuration(&c.ScanInterval, d.ScanInterval)
	fillDuration(&c.BackoffMin, d.BackoffMin)
	fillDuration(&c.BackoffMax, d.BackoffMax)
	fillDuration(&c.RejectedRecheck, d.RejectedRecheck)
	fillDuration(&c.ExpiryWarning, d.ExpiryWarning)
	fillDuration(&c.ForcedInterval, d.ForcedInterval)
	if c.RefreshConcurrency <= 0 {
		c.RefreshConcurrency = d.RefreshConcurrency
	}
	if c.Now == nil {
		c.Now = d.Now
	}
	if c.Fingerprint == nil {
		c.Fingerprint = d.Fingerprint
	}
	if c.OnCacheLookup == nil {
		c.OnCacheLookup = d.OnCacheLookup
	}
	if c.Logger == nil {
		c.Logger = d.Logger
	}
}

func fillDuration(p *time.Duration, v time.Duration) {
	if *p <= 0 {
		*p = v
	}
}

// Issued is a token ready to hand out, or an API-key account's key. It is
// immutable and shared.
type Issued struct {
	provider.Token
	// APIKey: AccessToken is the account's API key, sent as x-api-key, and
	// Expiry the key's expire time (far ahead if it has none).
	APIKey     bool
	APIBaseURL string
	// Headers must not be modified.
	Headers map[string]string
	// Fingerprint names the token in the audit trail (Config.Fingerprint).
	Fingerprint string

	echo func() secret.Detector
}

// newIssued makes the Issued of a credential, with its Echo.
func newIssued(is Issued) *Issued {
	is.echo = sync.OnceValue(func() secret.Detector { return secret.NewDetector(is.AccessToken, "") })
	return &is
}

// Echo finds the credential echoed back in any form (see secret.Detector).
// It is built once per credential, when first asked for: building it costs
// about as much as a proxied call.
func (is *Issued) Echo() secret.Detector { return is.echo() }

// Authorize sets the headers that make an API request use the credential:
// Authorization (or x-api-key) and the account's extra headers.
func (is *Issued) Authorize(h http.Header) {
	if is.APIKey {
		h.Set("x-api-key", is.AccessToken.Reveal())
	} else {
		h.Set("Authorization", is.TokenType+" "+is.AccessToken.Reveal())
	}
	for k, v := range is.Headers {
		h.Set(k, v)
	}
}

// lifetime is how long the provider's tokens are good for (less the margin):
// the longest min_ttl a fresh token can meet.
func (is *Issued) lifetime() time.Duration { return is.Expiry.Sub(is.Obtained) }

// Status is an account's token health.
type Status struct {
	State         string
	LastTokenTime time.Time
	// LastError is set while the account is not active.
	LastError *store.Failure
	// SecretUse is what the broker saw of each secret, by secret ID. It is
	// replaced, never modified.
	SecretUse map[string]store.SecretUse
}

// Manager is the token cache. Create it with New, fill it with Load, and
// run the refresher with Run.
type Manager struct {
	cfg      Config
	store    *store.Store
	master   *seal.MasterKey
	provider *provider.Client

	mu      sync.RWMutex
	entries map[string]*entry

	runs sync.WaitGroup // every upstream request in flight
}

type entry struct {
	id         string
	apiBaseURL string
	headers    map[string]string
	// apiKey: the entry holds an API key (in current) and never fetches.
	apiKey bool

	current atomic.Pointer[Issued]

	mu sync.Mutex
	// keyErr is why an API-key account has no usable key, if it has none.
	keyErr error
	// secrets are the account's secrets without their sealed values: what
	// checkExpiry needs.
	secrets []store.Secret
	// expiryWarned is when checkExpiry last warned that the secrets expire.
	expiryWarned time.Time
	status       Status
	inflight     *call
	failures     int       // consecutive failed requests
	nextAttempt  time.Time // no upstream request before this
	lastErr      *FetchError
	refreshAt    time.Time
	invalidated  time.Time // when Invalidate last dropped a token
	removed      bool
	// lifetime is how long the account's last token was good for (also
	// known after a restart, from the stored token state): a min_ttl of
	// at least this is refused without asking the provider.
	lifetime time.Duration
	forced   time.Time // when a min_ttl last forced a refresh
	// checking: a check of the API key is running; checked is when the
	// last one started (see APIKeyAnswered).
	checking bool
	checked  time.Time
}

// call is one upstream request that any number of callers wait for.
type call struct {
	done   chan struct{}
	issued *Issued
	err    error
}

// New returns an empty manager.
func New(cfg Config, st *store.Store, master *seal.MasterKey, prov *provider.Client) *Manager {
	cfg.setDefaults()
	return &Manager{cfg: cfg, store: st, master: master, provider: prov, entries: map[string]*entry{}}
}

// Load adds the stored accounts (store.All), with their tokens and health.
func (m *Manager) Load(all []store.Stored) {
	for _, st := range all {
		m.Add(st.Account, st.TokenState)
	}
}

// Add starts tracking an account; ts is its stored token state.
func (m *Manager) Add(a store.Account, ts store.TokenState) {
	desc := Describe(a)
	e := &entry{id: a.ID, apiBaseURL: m.provider.APIBaseURL(desc), headers: provider.Headers(desc), expiryWarned: ts.ExpiryWarned}
	e.status = Status{State: ts.State, LastTokenTime: ts.Obtained, LastError: ts.LastError, SecretUse: ts.SecretUse}
	e.secrets = secretsMeta(a)
	if ts.Expiry.After(ts.Obtained) && !ts.Obtained.IsZero() {
		e.lifetime = ts.Expiry.Sub(ts.Obtained)
	}
	if a.Tampered {
		m.recordFailure(e, store.ErrIntegrity)
	} else if a.Provider == provider.KindJumpCloudAPIKey {
		e.apiKey = true
		m.useAPIKey(e, a)
	} else if len(ts.SealedToken) > 0 {
		if tok, err := m.openToken(a, ts); err != nil {
			// A token that cannot be opened is only a cache miss.
			m.cfg.Logger.Warn("stored token unreadable; a new one will be fetched", "account", a.ID, "error", err)
		} else {
			e.publish(m.issue(e, tok), m.cfg)
		}
	}
	m.mu.Lock()
	m.entries[a.ID] = e
	m.mu.Unlock()
}

// Upsert takes note of an account as a committed change stored it: a new
// account is added, with ts (its token state, from the same change or
// the store); a known one whose list of secrets changed is told so (see
// SecretsChanged). Anything else an account change can change does not
// concern the cache.
func (m *Manager) Upsert(a store.Account, ts func() (store.TokenState, error)) {
	e := m.lookup(a.ID)
	if e != nil && a.Tampered {
		m.Remove(a.ID) // and added back, never to be used
		e = nil
	}
	if e == nil {
		t, err := ts()
		if err != nil {
			m.cfg.Logger.Warn("could not read a new account's token state; a token will be fetched", "account", a.ID, "error", err)
		}
		m.Add(a, t)
		return
	}
	e.mu.Lock()
	same := slices.EqualFunc(e.secrets, a.Secrets, func(x, y store.Secret) bool { return x.ID == y.ID && x.ExpireTime.Equal(y.ExpireTime) })
	e.mu.Unlock()
	if !same {
		m.SecretsChanged(a)
	}
}

// Replace makes the cache hold the accounts of all (store.All) and no
// other: those it knows are updated as Upsert does, new ones added, and
// the others removed.
func (m *Manager) Replace(all []store.Stored) {
	keep := make(map[string]bool, len(all))
	for _, st := range all {
		keep[st.Account.ID] = true
		m.Upsert(st.Account, func() (store.TokenState, error) { return st.TokenState, nil })
	}
	for _, e := range m.all() {
		if !keep[e.id] {
			m.Remove(e.id)
		}
	}
}

// SecretsChanged takes note of an account's new list of secrets: an
// API-key account switches to its newest key; a service account, which
// reads its secrets on each token request, may ask the provider again at
// once, so that a secret added to fix a rejected or expired one is used
// without waiting out the backoff.
func (m *Manager) SecretsChanged(a store.Account) {
	e := m.lookup(a.ID)
	if e == nil {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.secrets = secretsMeta(a)
	if e.apiKey {
		m.useAPIKey(e, a)
	} else {
		e.failures, e.nextAttempt = 0, time.Time{}
	}
}

// secretsMeta is a's secrets without their sealed values.
func secretsMeta(a store.Account) []store.Secret {
	out := slices.Clone(a.Secrets)
	for i := range out {
		out[i].Sealed = nil
	}
	return out
}

// useAPIKey makes the newest unexpired key of API-key account a the one
// the proxy sends, or records why there is none; e.mu must be held (or e
// not yet shared).
func (m *Manager) useAPIKey(e *entry, a store.Account) {
	key, expire, err := m.openAPIKey(a)
	if err != nil {
		e.current.Store(nil)
		e.keyErr = err
		if !errors.Is(err, ErrSecretsExpired) {
			e.keyErr = fmt.Errorf("API key of account %s unreadable: %w", a.ID, err)
			m.cfg.Logger.Error("API key unreadable; the account cannot be used", "account", a.ID, "error", err)
		}
		return
	}
	if expire.IsZero() {
		expire = neverExpires
	}
	e.keyErr = nil
	e.current.Store(newIssued(Issued{Token: provider.Token{AccessToken: key, Obtained: m.cfg.Now(), Expiry: expire}, APIKey: true, APIBaseURL: e.apiBaseURL, Headers: e.headers}))
}

// Remove stops tracking an account; callers waiting on it get their answer,
// later callers get ErrNotFound.
func (m *Manager) Remove(id string) {
	m.mu.Lock()
	e := m.entries[id]
	delete(m.entries, id)
	m.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		e.removed = true
		e.current.Store(nil)
		e.mu.Unlock()
	}
}

// Status returns an account's health.
func (m *Manager) Status(id string) (Status, bool) {
	e := m.lookup(id)
	if e == nil {
		return Status{}, false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.status, true
}

// all is every tracked account, for the background scans.
func (m *Manager) all() []*entry {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return slices.Collect(maps.Values(m.entries))
}

func (m *Manager) lookup(id string) *entry {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.entries[id]
}

// neverExpires is the expiry of an API key.
var neverExpires = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// Get returns a token for the account that stays valid for more than minTTL,
// fetching one if the cached token would not. For an API-key account it
// returns ErrProxyOnly.
func (m *Manager) Get(ctx context.Context, id string, minTTL time.Duration) (*Issued, error) {
	e := m.lookup(id)
	if e == nil {
		return nil, ErrNotFound
	}
	if e.apiKey {
		return nil, ErrProxyOnly
	}
	return m.get(ctx, e, minTTL)
}

// Credential returns what the egress proxy authenticates the account's API
// calls with: its API key, or a token as Get(ctx, id, 0) returns it.
func (m *Manager) Credential(ctx context.Context, id string) (*Issued, error) {
	e := m.lookup(id)
	if e == nil {
		return nil, ErrNotFound
	}
	if !e.apiKey {
		return m.get(ctx, e, 0)
	}
	if is := e.current.Load(); is != nil && m.cfg.Now().Before(is.Expiry) {
		return is, nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	m.replaceExpiredKey(e)
	switch is := e.current.Load(); {
	case e.removed:
		return nil, ErrNotFound
	case is != nil:
		return is, nil
	default:
		return nil, e.keyErr
	}
}

// replaceExpiredKey moves an API-key account whose key has expired on to
// its next unexpired key, or to NEEDS_ATTENTION (SECRET_EXPIRED) when none
// is left; e.mu must be held.
func (m *Manager) replaceExpiredKey(e *entry) {
	if e.removed {
		return
	}
	if is := e.current.Load(); is != nil {
		if m.cfg.Now().Before(is.Expiry) {
			return
		}
		a, err := m.store.Account(e.id)
		if err != nil {
			m.cfg.Logger.Error("could not read an account whose API key expired", "account", e.id, "error", err)
			return
		}
		m.useAPIKey(e, a)
	}
	if errors.Is(e.keyErr, ErrSecretsExpired) && e.status.State != StateNeedsAttention {
		m.changeStatus(e, Status{State: StateNeedsAttention, LastError: &store.Failure{
			Reason: ReasonSecretExpired, Message: ErrSecretsExpired.Error(), Time: m.cfg.Now(),
		}})
	}
}

// Invalidate is for an upstream API that rejected token is (HTTP 401): if
// is is still the account's token, and no token of the account was dropped
// in the last invalidateInterval, it is dropped so that the next call
// fetches a new one. Invalidate reports whether a retry may get a
// different token.
func (m *Manager) Invalidate(id string, is *Issued) bool {
	e := m.lookup(id)
	if e == nil || e.apiKey {
		return false
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current.Load() != is {
		return true // replaced already
	}
	now := m.cfg.Now()
	if now.Sub(e.invalidated) < invalidateInterval {
		return false
	}
	e.invalidated = now
	e.current.Store(nil)
	m.cfg.Logger.Info("an upstream API rejected the account's token; fetching a new one", "account", id)
	return true
}

// APIKeyAnswered takes note of how an API answered a call made with an
// API-key account's key. Such an answer alone changes nothing, since any
// caller can pick a path that answers 401: a 401 while the account is
// active, or a success while its key stands rejected, prompts a check of
// the key with the linking check (GET /organizations), at most once per
// Config.ForcedInterval and off the caller's path, and only the check's
// verdict changes the state.
func (m *Manager) APIKeyAnswered(id string, httpStatus int) {
	accepted := httpStatus >= 200 && httpStatus < 300
	e := m.lookup(id)
	if e == nil || !e.apiKey || (!accepted && httpStatus != http.StatusUnauthorized) {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	is := e.current.Load()
	now := m.cfg.Now()
	if is == nil || e.removed || accepted != keyRejected(e.status) || e.checking || now.Sub(e.checked) < m.cfg.ForcedInterval {
		return
	}
	e.checking, e.checked = true, now
	m.runs.Add(1)
	go m.checkAPIKey(e, is)
}

// keyRejected reports whether an API-key account stands marked as having
// its key rejected.
func keyRejected(s Status) bool {
	return s.State == StateNeedsAttention && s.LastError != nil && s.LastError.Reason == ReasonCredentialsRejected
}

// checkAPIKey proves key is, the one an API answered, with the provider's
// check, and sets the account's state from the verdict unless the account
// moved on to another key meanwhile.
func (m *Manager) checkAPIKey(e *entry, is *Issued) {
	defer m.runs.Done()
	a, err := m.store.Account(e.id)
	if err == nil {
		cr := Describe(a)
		cr.ClientSecret = is.AccessToken
		err = m.provider.CheckAPIKey(context.Background(), cr)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.checking = false
	var rejected *provider.RejectedError
	switch {
	case e.removed || e.current.Load() != is:
	case err == nil:
		if e.status.State != StateActive {
			m.changeStatus(e, Status{State: StateActive})
		}
	case errors.As(err, &rejected):
		if !keyRejected(e.status) {
			m.cfg.Logger.Warn("the API rejected an account's API key", "account", e.id)
			m.changeStatus(e, Status{State: StateNeedsAttention, LastError: &store.Failure{
				Reason: ReasonCredentialsRejected, Message: rejected.Error() + "; link the account's new key", Time: m.cfg.Now(),
			}})
		}
	default:
		m.cfg.Logger.Warn("could not check an account's API key after an API answered unexpectedly; its state is unchanged", "account", e.id, "error", err)
	}
}

// changeStatus sets and stores an API-key account's health; e.mu must be
// held, and stays held while storing so that changes are stored in order.
func (m *Manager) changeStatus(e *entry, to Status) {
	before := e.status
	e.status = to
	if err := m.persist(e.id, to, provider.Token{}, nil, false, m.transition(e.id, before, to)); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.cfg.Logger.Error("could not save account state", "account", e.id, "error", err)
	}
}

func (m *Manager) get(ctx context.Context, e *entry, minTTL time.Duration) (*Issued, error) {
	if is := e.current.Load(); is != nil && is.Expiry.Sub(m.cfg.Now()) > minTTL {
		m.cfg.OnCacheLookup(true)
		return is, nil
	}
	m.cfg.OnCacheLookup(false)
	return m.getSlow(ctx, e, minTTL)
}

func (m *Manager) getSlow(ctx context.Context, e *entry, minTTL time.Duration) (*Issued, error) {
	e.mu.Lock()
	now := m.cfg.Now()
	if is := e.current.Load(); is != nil && is.Expiry.Sub(now) > minTTL {
		e.mu.Unlock()
		return is, nil
	}
	if e.removed {
		e.mu.Unlock()
		return nil, ErrNotFound
	}
	if e.lifetime > 0 && minTTL >= e.lifetime {
		e.mu.Unlock()
		return nil, &MinTTLTooLongError{Max: e.lifetime}
	}
	c := e.inflight
	if c == nil {
		if now.Before(e.nextAttempt) {
			err := e.lastErr
			e.mu.Unlock()
			return nil, err
		}
		// The cached token is still valid, so only min_ttl asks for a new one.
		if is := e.current.Load(); is != nil && now.Before(is.Expiry) {
			if next := e.forced.Add(m.cfg.ForcedInterval); now.Before(next) {
				e.mu.Unlock()
				return nil, &RefreshLimitedError{RetryAt: next}
			}
			e.forced = now
		}
		c = m.startLocked(e)
	}
	e.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if c.err != nil {
		return nil, c.err
	}
	if ttl := c.issued.Expiry.Sub(m.cfg.Now()); ttl <= minTTL {
		return nil, &MinTTLTooLongError{Max: ttl}
	}
	return c.issued, nil
}

// startLocked starts an upstream request for e; e.mu must be held.
func (m *Manager) startLocked(e *entry) *call {
	c := &call{done: make(chan struct{})}
	e.inflight = c
	m.runs.Add(1)
	go m.run(e, c)
	return c
}

// run makes one upstream request and publishes its outcome. The request is
// not tied to any caller: one caller giving up must not fail the others.
func (m *Manager) run(e *entry, c *call) {
	defer m.runs.Done()
	e.mu.Lock()
	use := e.status.SecretUse
	e.mu.Unlock()
	tok, key, use, err := m.fetch(e.id, use)

	e.mu.Lock()
	before := e.status
	if err == nil {
		c.issued = m.issue(e, tok)
		if !e.removed {
			e.publish(c.issued, m.cfg)
		}
		e.status = Status{State: StateActive, LastTokenTime: tok.Obtained}
		e.failures, e.nextAttempt, e.lastErr = 0, time.Time{}, nil
	} else {
		c.err = m.recordFailure(e, err)
	}
	e.status.SecretUse = use
	status := e.status
	e.mu.Unlock()

	// Persist while still marked in flight, so runs for one account never
	// overlap. Callers already see the new token through e.current.
	if perr := m.persist(e.id, status, tok, key, err == nil, m.transition(e.id, before, status)); perr != nil && !errors.Is(perr, store.ErrNotFound) {
		m.cfg.Logger.Error("could not save token state", "account", e.id, "error", perr)
	}

	e.mu.Lock()
	e.inflight = nil
	close(c.done)
	e.mu.Unlock()
}

func (m *Manager) issue(e *entry, tok provider.Token) *Issued {
	return newIssued(Issued{Token: tok, APIBaseURL: e.apiBaseURL, Headers: e.headers, Fingerprint: m.cfg.Fingerprint(tok.AccessToken.Reveal())})
}

// publish makes is the token callers get and schedules its renewal; e.mu
// must be held (or e not yet shared).
func (e *entry) publish(is *Issued, cfg Config) {
	e.lifetime = is.lifetime()
	margin := min(cfg.RefreshMargin, is.lifetime()/2)
	e.refreshAt = is.Expiry.Add(-margin - rand.N(margin/4+1))
	e.current.Store(is)
}

// recordFailure updates e after a failed request and returns the error
// callers get; e.mu must be held.
func (m *Manager) recordFailure(e *entry, err error) *FetchError {
	now := m.cfg.Now()
	e.failures++
	f := &store.Failure{Time: now}
	var delay time.Duration
	var rejected *provider.RejectedError
	var redirected *provider.RedirectedError
	var unavailable *provider.UnavailableError
	switch {
	case errors.Is(err, store.ErrIntegrity):
		// Never again: nothing of a record that failed its check is used.
		e.status.State = StateNeedsAttention
		f.Reason, f.Message = ReasonIntegrity, "a stored record of the account failed its integrity check (it was changed outside the broker), so the broker does not use the account: delete and re-link it, or restore a backup"
		delay = neverExpires.Sub(now)
		m.cfg.Logger.Error("a stored record of the account failed its integrity check; the account is not used", "account", e.id, "error", err)
	case errors.Is(err, ErrSecretsExpired):
		e.status.State = StateNeedsAttention
		f.Reason, f.Message = ReasonSecretExpired, err.Error()
		delay = m.cfg.RejectedRecheck
	case errors.As(err, &rejected):
		e.status.State = StateNeedsAttention
		f.Reason, f.Message = ReasonCredentialsRejected, rejected.Error()
		f.ProviderError, f.ProviderErrorDescription = rejected.Code, rejected.Description
		delay = m.cfg.RejectedRecheck
	case errors.As(err, &redirected):
		// Like rejected credentials, an admin has to fix the URL.
		e.status.State = StateNeedsAttention
		f.Reason, f.Message = ReasonProviderRedirected, redirected.Error()
		delay = m.cfg.RejectedRecheck
	case errors.As(err, &unavailable):
		e.status.State = StateDegraded
		f.Reason, f.Message = ReasonProviderUnavailable, unavailable.Error()
		delay = max(unavailable.RetryAfter, backoff(e.failures, m.cfg.BackoffMin, m.cfg.BackoffMax))
	default:
		e.status.State = StateDegraded
		f.Reason, f.Message = ReasonInternal, "broker fault; see the server log"
		delay = backoff(e.failures, m.cfg.BackoffMin, m.cfg.BackoffMax)
		m.cfg.Logger.Error("token request failed inside the broker", "account", e.id, "error", err)
	}
	if f.Reason != ReasonIntegrity && (e.status.LastError == nil || e.status.LastError.Message != f.Message) { // that one was logged above
		m.cfg.Logger.Warn("token request failed", "account", e.id, "state", e.status.State, "reason", f.Reason, "error", f.Message, "retry_in", delay.Round(time.Millisecond))
	}
	e.status.LastError = f
	e.nextAttempt = now.Add(delay)
	e.lastErr = &FetchError{Err: err, RetryAt: e.nextAttempt}
	return e.lastErr
}

// backoff is exponential from lo, capped at hi, with the upper half jittered.
func backoff(failures int, lo, hi time.Duration) time.Duration {
	d := hi
	if shift := failures - 1; shift < 30 && lo<<shift < hi {
		d = lo << shift
	}
	return d/2 + rand.N(d/2+1)
}

// ErrSecretsExpired means every secret of the account has expired.
var ErrSecretsExpired = errors.New("every secret of the account has expired; add a new one (AddAccountSecret)")

// fetch asks the provider for a token with the account's unexpired secrets,
// newest first except that those rejected last time go last: a rejection
// moves on to the next secret, any other failure ends the attempt. It
// returns the secrets' new use records with the outcome.
func (m *Manager) fetch(id string, use map[string]store.SecretUse) (provider.Token, *seal.DataKey, map[string]store.SecretUse, error) {
	a, err := m.store.Account(id)
	if err != nil {
		return provider.Token{}, nil, use, err
	}
	key, err := m.master.UnwrapDataKey(a.ID, a.WrappedKey)
	if err != nil {
		return provider.Token{}, nil, use, fmt.Errorf("unwrap data key: %w", err)
	}
	now := m.cfg.Now()
	use = maps.Clone(use)
	if use == nil {
		use = map[string]store.SecretUse{}
	}
	err = ErrSecretsExpired
	for _, sec := range UsableSecrets(a, use, now) {
		raw, oerr := key.Open(store.FieldClientSecret, sec.Sealed)
		if oerr != nil {
			return provider.Token{}, nil, use, fmt.Errorf("open secret %s: %w", sec.ID, oerr)
		}
		cr := Describe(a)
		cr.ClientSecret = secret.New(string(raw))
		var tok provider.Token
		tok, err = m.provider.Fetch(context.Background(), cr)
		var rejected *provider.RejectedError
		switch {
		case err == nil:
			use[sec.ID] = store.SecretUse{LastUsed: tok.Obtained}
			return tok, key, use, nil
		case errors.As(err, &rejected):
			u := use[sec.ID]
			u.Rejected = &store.Failure{Reason: ReasonCredentialsRejected, Message: rejected.Error(), ProviderError: rejected.Code, ProviderErrorDescription: rejected.Description, Time: now}
			use[sec.ID] = u
			m.cfg.Logger.Warn("the provider rejected a secret; trying the next one if there is one", "account", id, "secret", sec.ID)
		default:
			return provider.Token{}, key, use, err
		}
	}
	return provider.Token{}, key, use, err
}

// UsableSecrets are the account's unexpired secrets in the order they are
// tried: newest first, except that those the provider rejected last go last.
func UsableSecrets(a store.Account, use map[string]store.SecretUse, now time.Time) []store.Secret {
	var out []store.Secret
	for _, s := range a.Secrets {
		if s.ExpireTime.IsZero() || now.Before(s.ExpireTime) {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(x, y store.Secret) int {
		if rx, ry := use[x.ID].Rejected != nil, use[y.ID].Rejected != nil; rx != ry {
			if rx {
				return 1
			}
			return -1
		}
		return y.CreateTime.Compare(x.CreateTime)
	})
	return out
}

// openAPIKey returns the API key an API-key account uses, its newest
// unexpired one, with the key's expire time (zero if none).
func (m *Manager) openAPIKey(a store.Account) (secret.String, time.Time, error) {
	usable := UsableSecrets(a, nil, m.cfg.Now())
	if len(usable) == 0 {
		return secret.String{}, time.Time{}, ErrSecretsExpired
	}
	key, err := m.master.UnwrapDataKey(a.ID, a.WrappedKey)
	if err != nil {
		return secret.String{}, time.Time{}, fmt.Errorf("unwrap data key: %w", err)
	}
	raw, err := key.Open(store.FieldClientSecret, usable[0].Sealed)
	if err != nil {
		return secret.String{}, time.Time{}, fmt.Errorf("open API key: %w", err)
	}
	return secret.New(string(raw)), usable[0].ExpireTime, nil
}

// transition is the audit event of an account's change of state, or nil if
// the state did not change.
func (m *Manager) transition(id string, from, to Status) *store.AuditEvent {
	if from.State == to.State {
		return nil
	}
	detail := from.State + " -> " + to.State
	if f := to.LastError; f != nil {
		detail += ": " + f.Reason + ": " + f.Message
	}
	m.cfg.Logger.Info("account state changed", "account", id, "from", from.State, "to", to.State)
	// The broker's own action, named as package server names accounts and itself.
	return &store.AuditEvent{Time: m.cfg.Now(), Principal: "credbroker", Method: "account_state", Resource: "accounts/" + id, Code: "OK", Detail: detail}
}

func (m *Manager) persist(id string, status Status, tok provider.Token, key *seal.DataKey, newToken bool, ev *store.AuditEvent) error {
	var sealed []byte
	if newToken {
		var err error
		if sealed, err = SealToken(key, tok); err != nil {
			return err
		}
	}
	return m.store.UpdateTokenState(id, func(ts *store.TokenState) {
		ts.State, ts.LastError, ts.SecretUse = status.State, status.LastError, status.SecretUse
		if newToken {
			ts.SealedToken, ts.TokenType, ts.Expiry, ts.Obtained = sealed, tok.TokenType, tok.Expiry, tok.Obtained
		}
	}, ev)
}

func (m *Manager) openToken(a store.Account, ts store.TokenState) (provider.Token, error) {
	key, err := m.master.UnwrapDataKey(a.ID, a.WrappedKey)
	if err != nil {
		return provider.Token{}, err
	}
	raw, err := key.Open(store.FieldAccessToken, ts.SealedToken)
	if err != nil {
		return provider.Token{}, err
	}
	return provider.Token{AccessToken: secret.New(string(raw)), TokenType: ts.TokenType, Expiry: ts.Expiry, Obtained: ts.Obtained}, nil
}

// SealToken encrypts an access token for storage under the account's data key.
func SealToken(key *seal.DataKey, tok provider.Token) ([]byte, error) {
	return key.Seal(store.FieldAccessToken, []byte(tok.AccessToken.Reveal()))
}

// Describe is the account's provider configuration, without its secret.
func Describe(a store.Account) provider.Credentials {
	return provider.Credentials{
		Kind: a.Provider, ClientID: a.ClientID, Region: a.Region, OrgID: a.OrgID,
		TokenURL: a.TokenURL, Scopes: a.Scopes, AuthStyle: a.AuthStyle,
		EndpointParams: a.EndpointParams, APIBaseURL: a.APIBaseURL,
	}
}

// Run renews tokens in the background until ctx ends, then waits for every
// upstream request in flight, so the store can be closed after it returns.
func (m *Manager) Run(ctx context.Context) {
	defer m.runs.Wait()
	tick := time.NewTicker(m.cfg.ScanInterval)
	defer tick.Stop()
	slots := make(chan struct{}, m.cfg.RefreshConcurrency)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.refreshDue(slots)
		m.checkExpiry()
	}
}

// refreshDue starts requests for accounts whose token is missing or due for
// renewal and whose gate is open, while refresher slots are free.
func (m *Manager) refreshDue(slots chan struct{}) {
	for _, e := range m.all() {
		e.mu.Lock()
		now := m.cfg.Now()
		start := !e.removed && !e.apiKey && e.inflight == nil && !now.Before(e.nextAttempt) &&
			(e.current.Load() == nil || !now.Before(e.refreshAt))
		if !start {
			e.mu.Unlock()
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			e.mu.Unlock()
			return // all slots busy; the next scan carries on
		}
		c := m.startLocked(e)
		e.mu.Unlock()
		go func() {
			<-c.done
			<-slots
		}()
	}
}

// Health is what metrics show of an account: its state and its secrets'
// expire times.
type Health struct {
	ID, State string
	Secrets   []store.Secret // without their sealed values
}

// Health is every tracked account's health.
func (m *Manager) Health() []Health {
	all := m.all()
	out := make([]Health, 0, len(all))
	for _, e := range all {
		e.mu.Lock()
		out = append(out, Health{ID: e.id, State: e.status.State, Secrets: e.secrets})
		e.mu.Unlock()
	}
	return out
}
