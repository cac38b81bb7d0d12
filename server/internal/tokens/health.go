package tokens

import (
	"errors"
	"time"

	"github.com/credbroker/credbroker/internal/backoff"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/store"
)

// State is an account's health.
type State string

// Account states, as stored and shown.
const (
	StateActive         State = "active"
	StateDegraded       State = "degraded"
	StateNeedsAttention State = "needs_attention"
)

// Reason is why an account is not active, or why a secret was rejected.
type Reason string

// Failure reasons, as stored and shown.
const (
	ReasonCredentialsRejected Reason = "credentials_rejected"
	ReasonProviderUnavailable Reason = "provider_unavailable"
	ReasonInternal            Reason = "internal"
	ReasonSecretExpired       Reason = "secret_expired"
	ReasonIntegrity           Reason = "integrity_check_failed"
	ReasonProviderRedirected  Reason = "provider_redirected"
	ReasonRefreshTokenRevoked Reason = "refresh_token_revoked"
)

// Status is an account's token health.
type Status struct {
	State         State
	LastTokenTime time.Time
	// LastError is set while the account is not active.
	LastError *Failure
	// SecretUse is what the broker saw of each secret. It is replaced,
	// never modified.
	SecretUse SecretUses
}

// Failure is a sanitized token-request failure: never a response body.
type Failure struct {
	Reason                   Reason
	Message                  string
	ProviderError            string
	ProviderErrorDescription string
	Time                     time.Time
}

// SecretUse is what the broker saw of one secret.
type SecretUse struct {
	ID       string // the secret's
	LastUsed time.Time
	// Rejected is set if the provider rejected the secret after LastUsed.
	Rejected *Failure
}

// SecretUses is what the broker saw of each of an account's secrets (two,
// most often one): a slice, not a map by ID, because the status of every
// account is kept in memory and a map of one costs about 400 bytes, this
// 50. It is replaced, never modified.
type SecretUses []SecretUse

// Of is the use of secret id (zero if none was seen).
func (u SecretUses) Of(id string) SecretUse {
	for _, x := range u {
		if x.ID == id {
			return x
		}
	}
	return SecretUse{ID: id}
}

// With is a copy of u with x as its secret's use.
func (u SecretUses) With(x SecretUse) SecretUses {
	out := make(SecretUses, 0, len(u)+1)
	for _, y := range u {
		if y.ID != x.ID {
			out = append(out, y)
		}
	}
	return append(out, x)
}

// statusOf is the health a stored token state records.
func statusOf(ts store.TokenState) Status {
	s := Status{State: State(ts.State), LastTokenTime: ts.Obtained, LastError: FailureOf(ts.LastError)}
	if ts.SecretUse != nil {
		s.SecretUse = make(SecretUses, 0, len(ts.SecretUse))
		for id, u := range ts.SecretUse {
			s.SecretUse = append(s.SecretUse, SecretUse{ID: id, LastUsed: u.LastUsed, Rejected: FailureOf(u.Rejected)})
		}
	}
	return s
}

// record stores s in a token state.
func (s Status) record(ts *store.TokenState) {
	ts.State, ts.LastError, ts.SecretUse = string(s.State), s.LastError.record(), nil
	if s.SecretUse != nil {
		ts.SecretUse = make(map[string]store.SecretUse, len(s.SecretUse))
		for _, u := range s.SecretUse {
			ts.SecretUse[u.ID] = store.SecretUse{LastUsed: u.LastUsed, Rejected: u.Rejected.record()}
		}
	}
}

// FailureOf is a stored failure as the broker reports it.
func FailureOf(f *store.Failure) *Failure {
	if f == nil {
		return nil
	}
	return &Failure{Reason: Reason(f.Reason), Message: f.Message, ProviderError: f.ProviderError, ProviderErrorDescription: f.ProviderErrorDescription, Time: f.Time}
}

func (f *Failure) record() *store.Failure {
	if f == nil {
		return nil
	}
	return &store.Failure{Reason: string(f.Reason), Message: f.Message, ProviderError: f.ProviderError, ProviderErrorDescription: f.ProviderErrorDescription, Time: f.Time}
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

// changeStatus sets and stores an API-key account's health; e.mu must be
// held, and stays held while storing so that changes are stored in order.
func (m *Manager) changeStatus(e *entry, to Status) {
	before := e.status
	e.status = to
	update := func(change func(*store.TokenState, []byte) error, ev *store.AuditEvent) error {
		return m.store.UpdateTokenState(e.id, change, ev)
	}
	if err := m.persist(update, e.id, to, provider.Token{}, false, m.transition(e.id, before, to)); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.cfg.Logger.Error("could not save account state", "account", e.id, "error", err)
	}
}

// recordFailure updates e after a failed request and returns the error
// callers get; e.mu must be held.
func (m *Manager) recordFailure(e *entry, err error) *FetchError {
	now := m.cfg.Now()
	sb := e.writeSetbacks()
	sb.failures++
	f := &Failure{Time: now}
	var delay time.Duration
	var rejected *provider.RejectedError
	var redirected *provider.RedirectedError
	var unavailable *provider.UnavailableError
	var revoked *RefreshTokenRevokedError
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
	case errors.As(err, &revoked):
		// Asking again with the same refresh token cannot work: only a
		// reconnect (which stores a new one) can.
		e.status.State = StateNeedsAttention
		f.Reason, f.Message = ReasonRefreshTokenRevoked, revoked.Error()
		f.ProviderError, f.ProviderErrorDescription = revoked.Rejected.Code, revoked.Rejected.Description
		delay = neverExpires.Sub(now)
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
		delay = max(unavailable.RetryAfter, backoff.Jittered(sb.failures, m.cfg.BackoffMin, m.cfg.BackoffMax))
	default:
		e.status.State = StateDegraded
		f.Reason, f.Message = ReasonInternal, "broker fault; see the server log"
		delay = backoff.Jittered(sb.failures, m.cfg.BackoffMin, m.cfg.BackoffMax)
		m.cfg.Logger.Error("token request failed inside the broker", "account", e.id, "error", err)
	}
	if f.Reason != ReasonIntegrity && (e.status.LastError == nil || e.status.LastError.Message != f.Message) { // that one was logged above
		m.cfg.Logger.Warn("token request failed", "account", e.id, "state", e.status.State, "reason", f.Reason, "error", f.Message, "retry_in", retryIn(delay))
	}
	e.status.LastError = f
	sb.nextAttempt = now.Add(delay)
	sb.lastErr = &FetchError{Err: err, RetryAt: sb.nextAttempt}
	return sb.lastErr
}

// retryIn says when the broker asks again, for the log: never (until an
// admin acts) for the failures it does not retry.
func retryIn(delay time.Duration) any {
	if delay > 24*365*time.Hour {
		return "not until an admin acts"
	}
	return delay.Round(time.Millisecond)
}

// transition is the audit event of an account's change of state, or nil if
// the state did not change.
func (m *Manager) transition(id string, from, to Status) *store.AuditEvent {
	if from.State == to.State {
		return nil
	}
	detail := string(from.State) + " -> " + string(to.State)
	if f := to.LastError; f != nil {
		detail += ": " + string(f.Reason) + ": " + f.Message
	}
	m.cfg.Logger.Info("account state changed", "account", id, "from", from.State, "to", to.State)
	ev := audit.Own(m.cfg.Now(), "account_state", audit.AccountName(id), detail)
	return &ev
}

// persist stores an account's health and, if newToken, tok (and its
// refresh token, if it has one), sealed with the account's data key, with
// update (the store's, or a refresh lock's fenced one).
func (m *Manager) persist(update func(func(*store.TokenState, []byte) error, *store.AuditEvent) error, id string, status Status, tok provider.Token, newToken bool, ev *store.AuditEvent) error {
	return update(func(ts *store.TokenState, wrapped []byte) error {
		var sealed, sealedRefresh []byte
		if newToken {
			var err error
			if sealed, err = m.keys.Seal(id, wrapped, keyring.FieldAccessToken, []byte(tok.AccessToken.Reveal())); err != nil {
				return err
			}
			if !tok.RefreshToken.IsZero() {
				if sealedRefresh, err = m.keys.Seal(id, wrapped, keyring.FieldRefreshToken, []byte(tok.RefreshToken.Reveal())); err != nil {
					return err
				}
			}
		}
		status.record(ts)
		if newToken {
			ts.SealedToken, ts.TokenType, ts.Expiry, ts.Obtained = sealed, tok.TokenType, tok.Expiry, tok.Obtained
		}
		if sealedRefresh != nil {
			ts.SealedRefreshToken = sealedRefresh
		}
		return nil
	}, ev)
}

// Health is what metrics show of an account: its state and its secrets'
// expire times.
type Health struct {
	ID      string
	State   State
	Secrets []store.Secret // without their sealed values
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
