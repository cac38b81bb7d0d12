package tokens

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/store"
)

// useAPIKey makes the newest unexpired key of API-key account a the one
// the proxy sends, or records why there is none; e.mu must be held (or e
// not yet shared).
func (m *Manager) useAPIKey(e *entry, a store.Account) {
	key, expire, err := m.openAPIKey(a)
	if err != nil {
		e.current.Store(nil)
		sb := e.writeSetbacks()
		sb.keyErr = err
		if !errors.Is(err, ErrSecretsExpired) {
			sb.keyErr = fmt.Errorf("API key of account %s unreadable: %w", a.ID, err)
			m.cfg.Logger.Error("API key unreadable; the account cannot be used", "account", a.ID, "error", err)
		}
		return
	}
	if expire.IsZero() {
		expire = neverExpires
	}
	if e.setbacks != nil {
		e.setbacks.keyErr = nil
	}
	e.current.Store(&Issued{Token: provider.Token{AccessToken: key, Obtained: m.cfg.Now(), Expiry: expire}, APIKey: true, APIBaseURL: e.apiBaseURL, Headers: e.headers})
}

// neverExpires is the expiry of an API key.
var neverExpires = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

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
		return nil, e.readSetbacks().keyErr
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
	if errors.Is(e.readSetbacks().keyErr, ErrSecretsExpired) && e.status.State != StateNeedsAttention {
		m.changeStatus(e, Status{State: StateNeedsAttention, LastError: &Failure{
			Reason: ReasonSecretExpired, Message: ErrSecretsExpired.Error(), Time: m.cfg.Now(),
		}})
	}
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
	if sb := e.readSetbacks(); is == nil || e.removed || accepted != keyRejected(e.status) || sb.checking || now.Sub(sb.checked) < m.cfg.ForcedInterval {
		return
	}
	sb := e.writeSetbacks()
	sb.checking, sb.checked = true, now
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
	e.writeSetbacks().checking = false
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
			m.changeStatus(e, Status{State: StateNeedsAttention, LastError: &Failure{
				Reason: ReasonCredentialsRejected, Message: rejected.Error() + "; link the account's new key", Time: m.cfg.Now(),
			}})
		}
	default:
		m.cfg.Logger.Warn("could not check an account's API key after an API answered unexpectedly; its state is unchanged", "account", e.id, "error", err)
	}
}

// openAPIKey returns the API key an API-key account uses, its newest
// unexpired one, with the key's expire time (zero if none).
func (m *Manager) openAPIKey(a store.Account) (secret.String, time.Time, error) {
	usable := UsableSecrets(a, nil, m.cfg.Now())
	if len(usable) == 0 {
		return secret.String{}, time.Time{}, ErrSecretsExpired
	}
	raw, err := m.keys.Open(a.ID, a.WrappedKey, keyring.FieldClientSecret, usable[0].Sealed)
	if err != nil {
		return secret.String{}, time.Time{}, fmt.Errorf("open API key: %w", err)
	}
	return secret.New(string(raw)), usable[0].ExpireTime, nil
}
