package store

import (
	"errors"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Authorization is a sign-in at an OAuth 2.0 provider under way: the
// browser went to the provider's sign-in page and is to come back to the
// Hub with a code. It is stored under a keyed hash of its state (which
// the browser carries), so that whoever reads the storage cannot finish
// it, and taken (deleted) when the browser comes back, so that a callback
// works once.
type Authorization struct {
	Version int `json:"v"`
	// AccountID is the account the sign-in links; Reconnect: it exists,
	// and gets new tokens.
	AccountID string `json:"account_id"`
	Reconnect bool   `json:"reconnect,omitempty"`
	// ReconnectOf is when the reconnected account was created: a sign-in
	// finishes only for the account it started for, not one re-linked
	// under the same id meanwhile.
	ReconnectOf time.Time `json:"reconnect_of,omitzero"`
	DisplayName string    `json:"display_name,omitempty"`
	// Principal started it: a Hub admin, or a connect link
	// ("connectSessions/{id}", whose hash is ConnectHash).
	Principal   string `json:"principal"`
	ConnectHash string `json:"connect_hash,omitempty"`
	// BrowserHash is a keyed hash of the cookie the browser that started
	// it holds: the callback must come from that browser.
	BrowserHash string `json:"browser_hash"`
	// RedirectURI is where the provider sends the browser back.
	RedirectURI string `json:"redirect_uri"`
	// App is the provider and the app the broker signs in as.
	App              SignInApp `json:"app"`
	SecretExpireTime time.Time `json:"secret_expire_time,omitzero"`
	ExpireTime       time.Time `json:"expire_time"`
}

func (a *Authorization) version() int { return a.Version }

// SignInApp is a provider whose users sign in by redirect, and the app the
// broker is registered as there (settings as an Account holds them), with
// its client secret sealed under a data key of its own (bound to KeyID).
type SignInApp struct {
	AuthURL            string            `json:"auth_url"`
	TokenURL           string            `json:"token_url"`
	ClientID           string            `json:"client_id"`
	Scopes             []string          `json:"scopes,omitempty"`
	AuthParams         map[string]string `json:"auth_params,omitempty"`
	AuthStyle          string            `json:"auth_style,omitempty"`
	APIBaseURL         string            `json:"api_base_url,omitempty"`
	DefaultLifetime    time.Duration     `json:"default_lifetime,omitempty"`
	KeyID              string            `json:"key_id,omitempty"`
	WrappedKey         []byte            `json:"wrapped_key,omitempty"`
	SealedClientSecret []byte            `json:"sealed_client_secret,omitempty"`
}

// rewrapApp moves app's data key to the current master key if another
// wraps it (sealed just before a rotation switched keys).
func (s *Store) rewrapApp(app *SignInApp) error {
	if len(app.WrappedKey) == 0 || s.masters.UnderCurrent(app.WrappedKey) {
		return nil
	}
	wrapped, err := s.masters.RewrapDataKey(app.KeyID, app.WrappedKey)
	if err == nil {
		app.WrappedKey = wrapped
	}
	return err
}

func (a *Authorization) markTampered(string) { *a = Authorization{} }

// CreateAuthorization stores a sign-in under way under the hash key, with
// the audit event of its start; sign-ins that expired before now go.
func (s *Store) CreateAuthorization(hash string, a Authorization, now time.Time, ev AuditEvent) error {
	a.Version = recordVersion
	if err := s.deleteExpiredAuthorizations(now); err != nil {
		return err
	}
	return s.commit(func() (txn, error) {
		if err := s.rewrapApp(&a.App); err != nil {
			return txn{}, err
		}
		return ops(conds(storage.VersionIs(key(authorizationsBucket, hash), storage.Absent)), s.put(authorizationsBucket, hash, a), s.appendAudit(ev))
	})
}

// TakeAuthorization removes and returns the sign-in stored under the hash
// key if check accepts it, or returns ErrNotFound if there is none (never
// started, expired and removed, or taken already: a callback works once),
// or check's error, keeping it.
func (s *Store) TakeAuthorization(hash string, check func(Authorization) error) (Authorization, error) {
	var a Authorization
	v, err := s.read(authorizationsBucket, hash, &a)
	if err != nil {
		if errors.Is(err, ErrIntegrity) {
			err = ErrNotFound
		}
		return a, err
	}
	if err := check(a); err != nil {
		return Authorization{}, err
	}
	if _, err := s.db.Txn(ctx, []storage.Cond{storage.VersionIs(key(authorizationsBucket, hash), v)}, []storage.Op{storage.Delete(key(authorizationsBucket, hash))}); err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return Authorization{}, ErrNotFound // taken by another callback first
		}
		return Authorization{}, err
	}
	return a, nil
}

// deleteExpiredAuthorizations removes the sign-ins that expired before
// now, and those whose record fails its check.
func (s *Store) deleteExpiredAuthorizations(now time.Time) error {
	_, err := s.deleteExpired(authorizationsBucket, now, func(hash string, value []byte) (time.Time, error) {
		var a Authorization
		err := s.open(authorizationsBucket, []byte(hash), value, &a)
		return a.ExpireTime, err
	})
	return err
}
