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
//
// One file per job: the cache (this file), the single-flight fetch
// (fetch.go), the background refresher (refresher.go), account health and
// its state changes (health.go), API-key accounts (apikey.go), secret
// expiry (expiry.go), and the configuration (config.go).
package tokens

import (
	"context"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/internal/parallel"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// ErrNotFound means the manager knows no such account.
var ErrNotFound = grpcerr.New(codes.NotFound, "account not found")

// ErrProxyOnly means the account holds an API key, which is never handed
// out: only the egress proxy uses it.
var ErrProxyOnly = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_PROXY_ONLY,
	"this account holds a long-lived API key, which the broker never hands out: call its API through the egress proxy (/v1/accounts/{account_id}/proxy/...) instead")

// invalidateInterval: an account's token is dropped because an API rejected
// it (see Invalidate) at most once per interval, so that an API answering
// 401 for other reasons cannot make the broker hammer the token endpoint.
const invalidateInterval = 10 * time.Second

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

	fingerprintOf func(token string) string // Config.Fingerprint
	// derived holds what Echo and Fingerprint make, once, when first
	// asked for: apart, so that each of the 100,000 tokens a broker may
	// cache, most never asked for between two renewals, is half the size.
	derived atomic.Pointer[derived]
}

// derived is what an Issued makes from its token when first asked for.
type derived struct {
	echoOnce        sync.Once
	echo            secret.Detector
	fingerprintOnce sync.Once
	fingerprint     string
}

// derive returns the Issued's derived, making it if none is yet.
func (is *Issued) derive() *derived {
	if d := is.derived.Load(); d != nil {
		return d
	}
	is.derived.CompareAndSwap(nil, &derived{})
	return is.derived.Load()
}

// Fingerprint names the token in the audit trail (Config.Fingerprint).
func (is *Issued) Fingerprint() string {
	d := is.derive()
	d.fingerprintOnce.Do(func() {
		if is.fingerprintOf != nil {
			d.fingerprint = is.fingerprintOf(is.AccessToken.Reveal())
		}
	})
	return d.fingerprint
}

// Echo finds the credential echoed back in any form (see secret.Detector).
// It is built once per credential, when first asked for: building it costs
// about as much as a proxied call.
func (is *Issued) Echo() secret.Detector {
	d := is.derive()
	d.echoOnce.Do(func() { d.echo = secret.NewDetector(is.AccessToken, "") })
	return d.echo
}

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

// Store is what the token cache needs of the storage: to read accounts,
// and to keep each account's token state. *store.Store provides it on any
// storage engine.
type Store interface {
	Account(id string) (store.Account, error)
	TokenState(id string) (store.TokenState, error)
	UpdateTokenState(id string, change func(t *store.TokenState, wrappedKey []byte) error, ev *store.AuditEvent) error
	// LockTokenRefresh takes the right to ask the provider for an
	// account's token (cluster-wide on etcd), waiting until ctx ends.
	LockTokenRefresh(ctx context.Context, id string) (*store.RefreshLock, error)
}

// Manager is the token cache. Create it with New, fill it with Load, and
// run the refresher with Run.
type Manager struct {
	cfg      Config
	store    Store
	keys     *keyring.Keyring
	provider *provider.Client

	mu      sync.RWMutex
	entries map[string]*entry
	// list is entries as a slice, for the background scans, made again
	// only after an account was added or removed (nil until then): with
	// many accounts, collecting them every second cost more than the scans.
	list []*entry
	// expiryNext is where the next expiry check starts (see checkExpiry).
	expiryNext int

	runs sync.WaitGroup // every upstream request in flight
	// stopping ends when Run does: token requests waiting for their
	// refresh lock give up, so that the broker can stop.
	stopping context.Context
	stop     context.CancelFunc
}

type entry struct {
	id         string
	apiBaseURL string
	headers    map[string]string
	// wrappedKey is the account's wrapped data key, to open tokens that
	// other replicas store; guarded by mu.
	wrappedKey []byte
	// apiKey: the entry holds an API key (in current) and never fetches.
	apiKey bool
	// refreshes: an authorization-code account, whose tokens come with a
	// refresh token that must be stored before they are served.
	refreshes bool
	// removed: the account was removed; guarded by mu (it sits here, by
	// the other bools, to keep the entry within 256 bytes).
	removed bool

	current atomic.Pointer[Issued]

	mu sync.Mutex
	// secrets are the account's secrets without their sealed values: what
	// checkExpiry needs.
	secrets []store.Secret
	// expiryWarned is when checkExpiry last warned that the secrets expire.
	expiryWarned time.Time
	status       Status
	inflight     *call
	refreshAt    time.Time
	// lifetime is how long the account's last token was good for (also
	// known after a restart, from the stored token state): a min_ttl of
	// at least this is refused without asking the provider.
	lifetime time.Duration
	// setbacks is nil until something other than a routine renewal
	// happens to the account (see readSetbacks and writeSetbacks).
	setbacks *setbacks
}

// setbacks are what an entry keeps only once something other than a
// routine renewal happened to it: apart, so that a healthy entry, the
// usual one of 100,000, is 40% smaller. Guarded by the entry's mu.
type setbacks struct {
	failures    int       // consecutive failed requests
	nextAttempt time.Time // no upstream request before this
	lastErr     *FetchError
	invalidated time.Time // when Invalidate last dropped a token
	// dropped is when the token Invalidate dropped last was obtained: a
	// stored token is used only if it was obtained later (see adopt).
	dropped time.Time
	forced  time.Time // when a min_ttl last forced a refresh
	// pending is a token whose refresh token (rotated by the provider)
	// could not be stored: the next request stores it first, and refreshes
	// with it.
	pending *provider.Token
	// keyErr is why an API-key account has no usable key, if it has none.
	keyErr error
	// checking: a check of the API key is running; checked is when the
	// last one started (see APIKeyAnswered).
	checking bool
	checked  time.Time
	// expiredNoted are the secrets whose passed expire time is stored as
	// noted (see noteExpired).
	expiredNoted map[string]bool
}

// noSetbacks is what readSetbacks returns for an entry that has none.
var noSetbacks setbacks

// readSetbacks returns e's setbacks, or zero ones if it has none, for
// reading only; e.mu must be held.
func (e *entry) readSetbacks() *setbacks {
	if e.setbacks != nil {
		return e.setbacks
	}
	return &noSetbacks
}

// writeSetbacks returns e's setbacks to change, made if it had none;
// e.mu must be held (or e not yet shared).
func (e *entry) writeSetbacks() *setbacks {
	if e.setbacks == nil {
		e.setbacks = &setbacks{}
	}
	return e.setbacks
}

// recovered forgets e's failed requests and their back-off; e.mu must
// be held.
func (e *entry) recovered() {
	if sb := e.setbacks; sb != nil {
		sb.failures, sb.nextAttempt, sb.lastErr = 0, time.Time{}, nil
	}
}

// dropPending forgets e's pending token, once its refresh token is stored
// or superseded; e.mu must be held.
func (e *entry) dropPending() {
	if sb := e.setbacks; sb != nil {
		sb.pending = nil
	}
}

// New returns an empty manager.
func New(cfg Config, st Store, keys *keyring.Keyring, prov *provider.Client) *Manager {
	cfg.setDefaults()
	m := &Manager{cfg: cfg, store: st, keys: keys, provider: prov, entries: map[string]*entry{}}
	m.stopping, m.stop = context.WithCancel(context.Background())
	return m
}

// Add starts tracking an account; ts is its stored token state.
func (m *Manager) Add(a store.Account, ts store.TokenState) {
	desc := Describe(a)
	e := &entry{id: a.ID, apiBaseURL: m.provider.APIBaseURL(desc), headers: provider.Headers(desc), expiryWarned: ts.ExpiryWarned, wrappedKey: a.WrappedKey,
		refreshes: desc.Kind == provider.KindOAuth2AuthorizationCode}
	e.status = statusOf(ts)
	e.secrets = secretsMeta(a)
	if ts.Expiry.After(ts.Obtained) && !ts.Obtained.IsZero() {
		e.lifetime = ts.Expiry.Sub(ts.Obtained)
	}
	if a.Tampered {
		m.recordFailure(e, store.ErrIntegrity)
	} else if provider.Kind(a.Provider) == provider.KindJumpCloudAPIKey {
		e.apiKey = true
		m.useAPIKey(e, a)
	} else if len(ts.SealedToken) > 0 {
		if tok, err := m.openToken(a.ID, a.WrappedKey, ts); err != nil {
			// A token that cannot be opened is only a cache miss.
			m.cfg.Logger.Warn("stored token unreadable; a new one will be fetched", "account", a.ID, "error", err)
		} else {
			e.publish(m.issue(e, tok), m.cfg)
		}
	}
	m.mu.Lock()
	m.entries[a.ID] = e
	m.list = nil
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
	e.wrappedKey = a.WrappedKey // rewrapped by a rekey
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
	}
	_ = parallel.Each(len(all), func(i int) error { // accounts apart: no two touch one entry
		m.Upsert(all[i].Account, func() (store.TokenState, error) { return all[i].TokenState, nil })
		return nil
	})
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
	} else if sb := e.setbacks; sb != nil {
		sb.failures, sb.nextAttempt = 0, time.Time{}
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

// Remove stops tracking an account; callers waiting on it get their answer,
// later callers get ErrNotFound.
func (m *Manager) Remove(id string) {
	m.mu.Lock()
	e := m.entries[id]
	delete(m.entries, id)
	m.list = nil
	m.mu.Unlock()
	if e != nil {
		e.mu.Lock()
		e.removed = true
		e.current.Store(nil)
		e.mu.Unlock()
	}
}

// all is every tracked account, for the background scans; callers must
// not change the slice.
func (m *Manager) all() []*entry {
	m.mu.RLock()
	list := m.list
	m.mu.RUnlock()
	if list != nil {
		return list
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.list == nil {
		m.list = slices.Collect(maps.Values(m.entries))
	}
	return m.list
}

func (m *Manager) lookup(id string) *entry {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.entries[id]
}

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
	if now.Sub(e.readSetbacks().invalidated) < invalidateInterval {
		return false
	}
	sb := e.writeSetbacks()
	sb.invalidated, sb.dropped = now, is.Obtained
	e.current.Store(nil)
	m.cfg.Logger.Info("an upstream API rejected the account's token; fetching a new one", "account", id)
	return true
}

func (m *Manager) get(ctx context.Context, e *entry, minTTL time.Duration) (*Issued, error) {
	if is := e.current.Load(); is != nil && is.Expiry.Sub(m.cfg.Now()) > minTTL {
		m.cfg.OnCacheLookup(true)
		return is, nil
	}
	m.cfg.OnCacheLookup(false)
	return m.getSlow(ctx, e, minTTL)
}

func (m *Manager) openToken(id string, wrappedKey []byte, ts store.TokenState) (provider.Token, error) {
	raw, err := m.keys.Open(id, wrappedKey, keyring.FieldAccessToken, ts.SealedToken)
	if err != nil {
		return provider.Token{}, err
	}
	return provider.Token{AccessToken: secret.New(string(raw)), TokenType: ts.TokenType, Expiry: ts.Expiry, Obtained: ts.Obtained}, nil
}

// Describe is the account's provider configuration, without its secret.
func Describe(a store.Account) provider.Credentials {
	return provider.Credentials{
		Kind: provider.Kind(a.Provider), ClientID: a.ClientID, Region: a.Region, OrgID: a.OrgID,
		TokenURL: a.TokenURL, Scopes: a.Scopes, AuthStyle: a.AuthStyle,
		EndpointParams: a.EndpointParams, APIBaseURL: a.APIBaseURL,
		AuthURL: a.AuthURL, AuthParams: a.AuthParams, DefaultLifetime: a.DefaultLifetime,
	}
}
