package store

import (
	"errors"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// ConnectSession is a connect link as stored, under a keyed hash of its
// secret (the link's last part), so that whoever reads the storage cannot
// use it. It lets whoever holds the link link one account, once, before
// it expires. It is kept a while after it is used or expires, so that
// opening it then says so.
type ConnectSession struct {
	Version int `json:"v"`
	// ID names it in the API and the audit trail ("connectSessions/{id}").
	ID string `json:"id"`
	// AccountID is the id the linked account gets; Provider its kind.
	AccountID   string    `json:"account_id"`
	Provider    string    `json:"provider"`
	DisplayName string    `json:"display_name,omitempty"`
	Creator     string    `json:"creator"`
	CreateTime  time.Time `json:"create_time"`
	ExpireTime  time.Time `json:"expire_time"`
	// UseTime is when it linked its account; zero until then.
	UseTime time.Time `json:"use_time,omitzero"`
	// ExpiryAudited: its expiry, unused, is in the audit trail.
	ExpiryAudited bool `json:"expiry_audited,omitempty"`
	// ClaimTime is when a use of it began (proving credentials takes a
	// while); zero when none is under way.
	ClaimTime time.Time `json:"claim_time,omitzero"`
	// Failures counts the uses the provider refused; RevokeTime is when an
	// admin revoked it, or too many refusals did.
	Failures   int       `json:"failures,omitempty"`
	RevokeTime time.Time `json:"revoke_time,omitzero"`
	// App is set for an account whose users sign in by redirect: the
	// provider and app the admin chose, its client secret sealed.
	App *SignInApp `json:"app,omitempty"`
}

func (c *ConnectSession) version() int { return c.Version }

func (c *ConnectSession) markTampered(string) { *c = ConnectSession{} }

// CreateConnectSession stores a new connect link under the hash key, with
// the audit event of its creation, unless its account exists already
// (ErrExists).
func (s *Store) CreateConnectSession(hash string, c ConnectSession, ev AuditEvent) error {
	c.Version = recordVersion
	err := s.commit(func() (txn, error) {
		if c.App != nil {
			if err := s.rewrapApp(c.App); err != nil {
				return txn{}, err
			}
		}
		return ops(conds(storage.VersionIs(key(connectSessionsBucket, hash), storage.Absent), storage.VersionIs(key(accountsBucket, c.AccountID), storage.Absent)),
			s.put(connectSessionsBucket, hash, c), s.appendAudit(ev))
	})
	if errors.Is(err, storage.ErrConflict) {
		return ErrExists
	}
	return err
}

// ConnectSession returns the connect link stored under the hash key and
// its version, ErrNotFound or ErrIntegrity.
func (s *Store) ConnectSession(hash string) (ConnectSession, storage.Version, error) {
	var c ConnectSession
	v, err := s.read(connectSessionsBucket, hash, &c)
	return c, v, err
}

// UpdateConnectSession replaces the connect link stored under the hash
// key if it is still at version v, with audit event ev if set, or returns
// storage.ErrConflict (another replica changed it first).
func (s *Store) UpdateConnectSession(hash string, v storage.Version, c ConnectSession, ev *AuditEvent) error {
	c.Version = recordVersion
	return s.commit(func() (txn, error) {
		r, err := s.db.Get(ctx, key(connectSessionsBucket, hash))
		switch {
		case errors.Is(err, storage.ErrNotFound):
			return txn{}, storage.ErrConflict
		case err != nil:
			return txn{}, err
		case r.Version != v:
			return txn{}, storage.ErrConflict
		}
		bs := []built{s.put(connectSessionsBucket, hash, c)}
		if ev != nil {
			bs = append(bs, s.appendAudit(*ev))
		}
		return ops(conds(storage.VersionIs(key(connectSessionsBucket, hash), v)), bs...)
	})
}

// StoredConnectSession is a connect link as listed: its hash key, version
// and record (zero if it failed its integrity check).
type StoredConnectSession struct {
	Hash    string
	Version storage.Version
	ConnectSession
	Tampered bool
}

// ConnectSessions lists every stored connect link.
func (s *Store) ConnectSessions() ([]StoredConnectSession, error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(connectSessionsBucket, "")})
	if err != nil {
		return nil, err
	}
	all := make([]StoredConnectSession, len(p.Records))
	for i, rec := range p.Records {
		hash := rec.Key[len(connectSessionsBucket)+1:]
		all[i] = StoredConnectSession{Hash: hash, Version: rec.Version}
		if err := s.open(connectSessionsBucket, []byte(hash), rec.Value, &all[i].ConnectSession); err != nil {
			all[i].Tampered = true
		}
	}
	return all, nil
}

// DeleteConnectSession removes the connect link under the hash key if it
// is still at version v (nothing if another replica changed or removed it).
func (s *Store) DeleteConnectSession(hash string, v storage.Version) error {
	_, err := s.db.Txn(ctx, []storage.Cond{storage.VersionIs(key(connectSessionsBucket, hash), v)}, []storage.Op{storage.Delete(key(connectSessionsBucket, hash))})
	if errors.Is(err, storage.ErrConflict) {
		return nil
	}
	return err
}
