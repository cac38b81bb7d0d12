package tokens

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// MinTTLTooLongError means the caller asked for a token that outlives
// anything the provider issues.
type MinTTLTooLongError struct{ Max time.Duration }

func (e *MinTTLTooLongError) Error() string {
	return fmt.Sprintf("min_ttl must be less than %s, the lifetime of this provider's tokens", e.Max.Round(time.Second))
}

// GRPCStatus is OUT_OF_RANGE, with the longest min_ttl in the ErrorInfo.
func (e *MinTTLTooLongError) GRPCStatus() *status.Status {
	return grpcerr.Status(codes.OutOfRange, e.Error(),
		grpcerr.Info(credbrokerv1.ErrorReason_MIN_TTL_TOO_LONG, map[string]string{"max_ttl": e.Max.Round(time.Second).String()}))
}

// RefreshLimitedError means a caller's min_ttl would force a new token
// (the cached one is still valid) but the account's last forced refresh
// was less than Config.ForcedInterval ago: callers cannot make the
// broker hammer the provider.
type RefreshLimitedError struct{ RetryAt time.Time }

// GRPCStatus is RESOURCE_EXHAUSTED, retrying when the next forced refresh
// may be made.
func (e *RefreshLimitedError) GRPCStatus() *status.Status {
	return grpcerr.Status(codes.ResourceExhausted, e.Error(), grpcerr.Info(credbrokerv1.ErrorReason_RATE_LIMITED, nil),
		grpcerr.Retry(max(time.Until(e.RetryAt), 0).Round(time.Millisecond)))
}

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

// GRPCStatus is the failed request's status; an unavailable provider's
// tells callers to retry when the broker will ask it again.
func (e *FetchError) GRPCStatus() *status.Status {
	var unavailable *provider.UnavailableError
	if errors.As(e.Err, &unavailable) {
		return unavailable.StatusRetryingAfter(time.Until(e.RetryAt))
	}
	if st, ok := status.FromError(e.Err); ok {
		return st
	}
	return nil // a broker fault: the API logs it and answers INTERNAL
}

// call is one upstream request that any number of callers wait for.
type call struct {
	done   chan struct{}
	issued *Issued
	err    error
	// replaces is the token that was cached when the request was
	// decided on: a newer one, stored by another replica meanwhile, makes
	// the request needless (see run).
	replaces *Issued
}

// errTokenAged: the provider's tokens expire before they reach callers
// (the provider, or this broker, answers too slowly for their lifetime).
var errTokenAged = grpcerr.New(codes.Unavailable, "the provider's new token expired before it could be served (the provider answered too slowly for its tokens' lifetime); retry")

// getSlow waits for a new token for e, starting the upstream request
// unless one is under way. A token that aged past min_ttl while its
// caller waited (one that could have served it, had it come sooner) is
// asked for once more.
func (m *Manager) getSlow(ctx context.Context, e *entry, minTTL time.Duration) (*Issued, error) {
	for attempt := 0; ; attempt++ {
		is, c, err := m.join(e, minTTL)
		if is != nil || err != nil {
			return is, err
		}
		select {
		case <-c.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		switch {
		case c.err != nil:
			return nil, c.err
		case c.issued.Expiry.Sub(m.cfg.Now()) > minTTL:
			return c.issued, nil
		case c.issued.lifetime() <= minTTL:
			return nil, &MinTTLTooLongError{Max: c.issued.lifetime()}
		case attempt > 0:
			return nil, errTokenAged
		}
	}
}

// join returns e's token if it lasts minTTL, or else the upstream request
// to wait for, started unless one is under way.
func (m *Manager) join(e *entry, minTTL time.Duration) (*Issued, *call, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := m.cfg.Now()
	if is := e.current.Load(); is != nil && is.Expiry.Sub(now) > minTTL {
		return is, nil, nil
	}
	if e.removed {
		return nil, nil, ErrNotFound
	}
	if e.lifetime > 0 && minTTL >= e.lifetime {
		return nil, nil, &MinTTLTooLongError{Max: e.lifetime}
	}
	if e.inflight != nil {
		return nil, e.inflight, nil
	}
	if sb := e.readSetbacks(); now.Before(sb.nextAttempt) {
		return nil, nil, sb.lastErr
	}
	// The cached token is still valid, so only min_ttl asks for a new one.
	if is := e.current.Load(); is != nil && now.Before(is.Expiry) {
		if next := e.readSetbacks().forced.Add(m.cfg.ForcedInterval); now.Before(next) {
			return nil, nil, &RefreshLimitedError{RetryAt: next}
		}
		e.writeSetbacks().forced = now
	}
	return nil, m.startLocked(e), nil
}

// startLocked starts an upstream request for e; e.mu must be held.
func (m *Manager) startLocked(e *entry) *call {
	c := &call{done: make(chan struct{}), replaces: e.current.Load()}
	e.inflight = c
	m.runs.Add(1)
	go m.run(e, c)
	return c
}

// run gets the account a new token and publishes the outcome. It is not
// tied to any caller: one caller giving up must not fail the others.
//
// It holds the account's refresh lock throughout, cluster-wide on etcd: a
// token another replica stored while this one waited is used as it is;
// otherwise this replica asks the provider, if it still holds the lock,
// and stores the outcome only while it does (fenced), so that a replica
// that lost its lock (paused, cut off) never overwrites a newer token.
func (m *Manager) run(e *entry, c *call) {
	defer m.runs.Done()
	defer func() {
		e.mu.Lock()
		e.inflight = nil
		close(c.done)
		e.mu.Unlock()
	}()
	cached := c.replaces
	lock, err := m.store.LockTokenRefresh(m.stopping, e.id)
	if err != nil {
		m.cfg.Logger.Warn("not asking the provider: could not take the account's refresh lock", "account", e.id, "error", err)
		c.err = m.storageFailed(err)
		return
	}
	// Unlocked once the outcome is stored, so that runs for one account
	// never overlap, on any replica.
	defer lock.Unlock()
	// While this replica waited, the lock's holder may have stored a
	// token, which the watch may have brought already.
	if c.issued, err = m.renewedSince(e, cached); c.issued != nil || err != nil {
		c.err = m.storageFailed(err)
		return
	}
	m.cfg.OnLocked(e.id)
	if err := lock.Check(); err != nil {
		// Lost meanwhile: the new holder's token, if it stored one.
		m.cfg.Logger.Warn("not asking the provider: the account's refresh lock was not held any more", "account", e.id, "error", err)
		if c.issued, _ = m.renewedSince(e, cached); c.issued == nil {
			c.err = m.storageFailed(err)
		}
		return
	}
	e.mu.Lock()
	use := e.status.SecretUse
	e.mu.Unlock()
	var had time.Time
	if cached != nil {
		had = cached.Expiry
	}
	m.cfg.Logger.Info("asking the provider for a token", "account", e.id, "cached_token_expires", had.Format(time.RFC3339))
	tok, use, err := m.fetch(e, use)

	e.mu.Lock()
	before := e.status
	status := Status{State: StateActive, LastTokenTime: tok.Obtained, SecretUse: use}
	if err != nil {
		c.err = m.recordFailure(e, err)
		e.status.SecretUse = use
		status = e.status
	} else if !e.refreshes {
		m.serve(e, c, tok, status) // callers see it now; it is stored below
	}
	e.mu.Unlock()

	perr := m.persist(lock.UpdateTokenState, e.id, status, tok, err == nil, m.transition(e.id, before, status))
	if err == nil && e.refreshes {
		// Served only once stored: a refresh token the provider rotated must
		// be kept before anything is done with what came with it.
		e.mu.Lock()
		if perr == nil {
			e.dropPending()
			m.serve(e, c, tok, status)
		} else if !tok.RefreshToken.IsZero() {
			e.writeSetbacks().pending = &tok
		}
		e.mu.Unlock()
		if perr != nil && c.issued == nil {
			if c.issued, _ = m.renewedSince(e, cached); c.issued == nil {
				c.err = m.storageFailed(perr)
			}
		}
	}
	switch {
	case errors.Is(perr, store.ErrLockLost):
		m.cfg.Logger.Warn("lost the account's refresh lock before storing its new token; another replica's stands", "account", e.id)
	case perr != nil && !errors.Is(perr, store.ErrNotFound):
		m.cfg.Logger.Error("could not save token state", "account", e.id, "error", perr)
	}
}

// serve makes tok the token callers of e get, as the outcome of call c,
// and status e's health; e.mu must be held.
func (m *Manager) serve(e *entry, c *call, tok provider.Token, status Status) {
	c.issued = m.issue(e, tok)
	if !e.removed {
		e.publish(c.issued, m.cfg)
	}
	e.status = status
	e.recovered()
}

// errReplacing is what callers get while an account's tokens are being
// replaced (a reconnect): its new token is there a moment later.
var errReplacing = grpcerr.New(codes.Unavailable, "the account is being reconnected: retry in a moment")

// NewGrant stores an account's new grant (a reconnect's tokens) with
// write, once any request under way has stored its outcome, and before
// another starts: on this replica (its single flight) and cluster-wide
// (the refresh lock write is given). A refresh with the old refresh token
// never lands over the new one.
func (m *Manager) NewGrant(ctx context.Context, id string, write func(*store.RefreshLock) error) error {
	e := m.lookup(id)
	if e == nil {
		return ErrNotFound
	}
	mine := &call{done: make(chan struct{}), err: errReplacing}
	for {
		e.mu.Lock()
		c := e.inflight
		if c == nil {
			e.inflight = mine
			e.mu.Unlock()
			break
		}
		e.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	defer func() {
		e.mu.Lock()
		e.inflight = nil
		close(mine.done)
		e.mu.Unlock()
	}()
	lock, err := m.store.LockTokenRefresh(ctx, id)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	return write(lock)
}

// storageFailed is what callers get when the refresh lock could not be
// taken, or was lost before the provider was asked (this replica lost
// touch with the storage for longer than its lease), or the stored token
// could not be read: the storage is out of reach, so they retry on
// another replica (the API maps store.ErrUnavailable). It is nil for nil.
func (m *Manager) storageFailed(err error) error {
	if err == nil || errors.Is(err, store.ErrUnavailable) || errors.Is(err, store.ErrIntegrity) {
		return err
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// renewedSince is a token that another replica got since e's cached token
// was cached: one the watch brought, or the stored one if it is newer
// than the cached one and not yet due for renewal (then published). It
// is nil if there is none; an error if the stored token could not be
// read, when asking the provider might ask twice.
func (m *Manager) renewedSince(e *entry, cached *Issued) (*Issued, error) {
	watched := func() *Issued {
		if now := e.current.Load(); now != cached && now != nil {
			return now
		}
		return nil
	}
	if now := watched(); now != nil {
		return now, nil
	}
	ts, err := m.store.TokenState(e.id)
	if err != nil {
		return nil, err
	}
	if is := m.adopt(e, ts); is != nil {
		return is, nil
	}
	// The watch may have brought the stored token while it was read, and
	// then adopt finds it is not newer than the current one.
	return watched(), nil
}

// adopt publishes the token of ts, and takes the health it records, if
// the token is newer than e's (obtained later: a new token may well
// expire sooner, if the provider shortened its tokens' lifetime) and not
// yet due for renewal; it returns it, or nil.
func (m *Manager) adopt(e *entry, ts store.TokenState) *Issued {
	e.mu.Lock()
	defer e.mu.Unlock()
	cur := e.current.Load()
	if e.removed || len(ts.SealedToken) == 0 || (cur != nil && !ts.Obtained.After(cur.Obtained)) || !ts.Obtained.After(e.readSetbacks().dropped) {
		return nil
	}
	margin := min(m.cfg.RefreshMargin, ts.Expiry.Sub(ts.Obtained)/2)
	if !m.cfg.Now().Before(ts.Expiry.Add(-margin)) {
		return nil
	}
	tok, err := m.openToken(e.id, e.wrappedKey, ts)
	if err != nil {
		m.cfg.Logger.Warn("a stored token is unreadable; not using it", "account", e.id, "error", err)
		return nil
	}
	is := m.issue(e, tok)
	e.publish(is, m.cfg)
	e.status = statusOf(ts)
	e.recovered()
	e.dropPending() // the stored refresh token came with the newer token
	return is
}

// TokenStored takes note of an account's token state as a commit stored
// it, this replica's or another's: a newer token is used from then on,
// and the account's health is the stored one.
func (m *Manager) TokenStored(id string, ts store.TokenState) {
	e := m.lookup(id)
	if e == nil || e.apiKey || m.adopt(e, ts) != nil {
		return
	}
	e.mu.Lock()
	if e.inflight == nil && !e.removed {
		e.status = statusOf(ts)
	}
	e.mu.Unlock()
}
func (m *Manager) issue(e *entry, tok provider.Token) *Issued {
	return &Issued{Token: tok, APIBaseURL: e.apiBaseURL, Headers: e.headers, fingerprintOf: m.cfg.Fingerprint}
}

// publish makes is the token callers get and schedules its renewal; e.mu
// must be held (or e not yet shared).
func (e *entry) publish(is *Issued, cfg Config) {
	e.lifetime = is.lifetime()
	e.refreshAt = refreshTime(is.Expiry, e.lifetime, cfg.RefreshMargin)
	e.current.Store(is)
}

// refreshTime is when to renew a token that expires at expiry after
// lifetime: margin before it (at most half the lifetime), less a random
// part of up to a quarter of the lifetime. Tokens fetched together, as when 100,000 accounts are linked or
// loaded in the same minute, so fall due over a quarter of their lifetime
// instead of in one burst, and drift further apart with each renewal; none
// is renewed before three quarters of its life less the margin.
func refreshTime(expiry time.Time, lifetime, margin time.Duration) time.Time {
	lifetime = max(lifetime, 0) // the provider client refuses such tokens; rand.N would panic
	margin = min(margin, lifetime/2)
	return expiry.Add(-margin - rand.N(lifetime/4+1))
}

// ErrSecretsExpired means every secret of the account has expired.
var ErrSecretsExpired = grpcerr.WithReason(codes.FailedPrecondition, credbrokerv1.ErrorReason_SECRET_EXPIRED,
	"every secret of the account has expired; add a new one (AddAccountSecret)")

// RefreshTokenRevokedError: the provider refused the account's refresh
// token (invalid_grant), and the storage holds no other.
type RefreshTokenRevokedError struct{ Rejected *provider.RejectedError }

func (e *RefreshTokenRevokedError) Error() string {
	return "the provider refused the account's refresh token (invalid_grant): reconnect the account in the Hub"
}

func (e *RefreshTokenRevokedError) Unwrap() error { return e.Rejected }

// GRPCStatus: only a reconnect helps.
func (e *RefreshTokenRevokedError) GRPCStatus() *status.Status {
	return grpcerr.Status(codes.FailedPrecondition, e.Error(), grpcerr.Info(credbrokerv1.ErrorReason_REFRESH_TOKEN_REVOKED, nil))
}

// fetch asks the provider for a token with the account's unexpired secrets,
// newest first except that those rejected last time go last: a rejection
// moves on to the next secret, any other failure ends the attempt. It
// returns the secrets' new use records with the outcome. An
// authorization-code account refreshes with its refresh token (see
// refreshWith); the token's RefreshToken is then the one to store, if
// any.
func (m *Manager) fetch(e *entry, use SecretUses) (provider.Token, SecretUses, error) {
	a, err := m.store.Account(e.id)
	if err != nil {
		return provider.Token{}, use, err
	}
	now := m.cfg.Now()
	err = ErrSecretsExpired
	for _, sec := range UsableSecrets(a, use, now) {
		raw, oerr := m.keys.Open(a.ID, a.WrappedKey, keyring.FieldClientSecret, sec.Sealed)
		if oerr != nil {
			return provider.Token{}, use, fmt.Errorf("open secret %s: %w", sec.ID, oerr)
		}
		cr := Describe(a)
		cr.ClientSecret = secret.New(string(raw))
		var tok provider.Token
		if e.refreshes {
			tok, err = m.refreshWith(e, a, cr)
		} else {
			tok, err = m.provider.Fetch(context.Background(), cr)
		}
		var rejected *provider.RejectedError
		var revoked *RefreshTokenRevokedError
		switch {
		case err == nil:
			return tok, use.With(SecretUse{ID: sec.ID, LastUsed: tok.Obtained}), nil
		case errors.As(err, &revoked):
			return provider.Token{}, use, err // the secret is not at fault
		case errors.As(err, &rejected):
			u := use.Of(sec.ID)
			u.Rejected = &Failure{Reason: ReasonCredentialsRejected, Message: rejected.Error(), ProviderError: rejected.Code, ProviderErrorDescription: rejected.Description, Time: now}
			use = use.With(u)
			m.cfg.Logger.Warn("the provider rejected a secret; trying the next one if there is one", "account", e.id, "secret", sec.ID)
		default:
			return provider.Token{}, use, err
		}
	}
	return provider.Token{}, use, err
}

// refreshWith refreshes an authorization-code account's token with cr
// (its client secret) and its refresh token: the one a failed store left
// pending, else the stored one. If the provider refuses it
// (invalid_grant), the stored one is read again: if another replica (or a
// reconnect) stored a newer one meanwhile, the request is made once more
// with it; if not, the refresh token is revoked. The token's RefreshToken
// is the one to store: the provider's new one, or the pending one; zero if
// the stored one stands.
func (m *Manager) refreshWith(e *entry, a store.Account, cr provider.Credentials) (provider.Token, error) {
	e.mu.Lock()
	pending := e.readSetbacks().pending
	e.mu.Unlock()
	var err error
	if pending != nil {
		cr.RefreshToken = pending.RefreshToken
	} else if cr.RefreshToken, err = m.storedRefreshToken(a); err != nil {
		return provider.Token{}, err
	}
	tok, err := m.provider.Fetch(context.Background(), cr)
	if invalidGrant(err) {
		stored, serr := m.storedRefreshToken(a)
		switch {
		case serr != nil:
			return provider.Token{}, serr
		case stored.Reveal() != cr.RefreshToken.Reveal():
			m.cfg.Logger.Warn("the provider refused the refresh token; retrying with the newer one stored meanwhile", "account", a.ID)
			cr.RefreshToken, pending = stored, nil
			tok, err = m.provider.Fetch(context.Background(), cr)
		}
	}
	if invalidGrant(err) {
		var rejected *provider.RejectedError
		errors.As(err, &rejected)
		return provider.Token{}, &RefreshTokenRevokedError{Rejected: rejected}
	}
	if err != nil {
		return provider.Token{}, err
	}
	if tok.RefreshToken.IsZero() || tok.RefreshToken.Reveal() == cr.RefreshToken.Reveal() {
		tok.RefreshToken = secret.String{} // not rotated: the stored one stands
		if pending != nil {
			tok.RefreshToken = pending.RefreshToken
		}
	}
	return tok, nil
}

// storedRefreshToken opens an account's stored refresh token.
func (m *Manager) storedRefreshToken(a store.Account) (secret.String, error) {
	ts, err := m.store.TokenState(a.ID)
	if err != nil {
		return secret.String{}, err
	}
	if len(ts.SealedRefreshToken) == 0 {
		return secret.String{}, fmt.Errorf("account %s has no stored refresh token", a.ID)
	}
	raw, err := m.keys.Open(a.ID, a.WrappedKey, keyring.FieldRefreshToken, ts.SealedRefreshToken)
	if err != nil {
		return secret.String{}, fmt.Errorf("open the refresh token: %w", err)
	}
	return secret.New(string(raw)), nil
}

// invalidGrant reports whether the provider refused a refresh token.
func invalidGrant(err error) bool {
	var rejected *provider.RejectedError
	return errors.As(err, &rejected) && rejected.Code == "invalid_grant"
}

// UsableSecrets are the account's unexpired secrets in the order they are
// tried: newest first, except that those the provider rejected last go last.
func UsableSecrets(a store.Account, use SecretUses, now time.Time) []store.Secret {
	var out []store.Secret
	for _, s := range a.Secrets {
		if s.ExpireTime.IsZero() || now.Before(s.ExpireTime) {
			out = append(out, s)
		}
	}
	slices.SortStableFunc(out, func(x, y store.Secret) int {
		if rx, ry := use.Of(x.ID).Rejected != nil, use.Of(y.ID).Rejected != nil; rx != ry {
			if rx {
				return 1
			}
			return -1
		}
		return y.CreateTime.Compare(x.CreateTime)
	})
	return out
}

// SealToken encrypts an access token for storage under the account's data key.
func SealToken(key *keyring.DataKey, tok provider.Token) ([]byte, error) {
	return key.Seal(keyring.FieldAccessToken, []byte(tok.AccessToken.Reveal()))
}
