package store

import (
	"errors"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// HubSession is a signed-in Hub session as stored, under a keyed hash of
// its secret (the cookie's value), so that whoever reads the storage
// cannot take it over. Every replica reads it, so a session lasts across
// replicas.
type HubSession struct {
	Version int `json:"v"`
	// Principal is who signed in: a caller key's principal or a
	// client-certificate principal.
	Principal  string    `json:"principal"`
	CreateTime time.Time `json:"create_time"`
	ExpireTime time.Time `json:"expire_time"`
}

func (h *HubSession) version() int { return h.Version }

func (h *HubSession) markTampered(string) { *h = HubSession{} }

// CreateHubSession stores a new session under the hash id, with the audit
// event of the sign-in.
func (s *Store) CreateHubSession(id string, h HubSession, ev AuditEvent) error {
	h.Version = recordVersion
	err := s.commit(func() (txn, error) {
		return ops(conds(storage.VersionIs(key(hubSessionsBucket, id), storage.Absent)), s.put(hubSessionsBucket, id, h), s.appendAudit(ev))
	})
	if errors.Is(err, storage.ErrConflict) {
		return ErrExists
	}
	return err
}

// HubSession returns the session stored under the hash id, ErrNotFound or
// ErrIntegrity.
func (s *Store) HubSession(id string) (HubSession, error) {
	var h HubSession
	_, err := s.read(hubSessionsBucket, id, &h)
	return h, err
}

// DeleteHubSession removes the session stored under the hash id, with
// the audit event of the sign-out, or returns ErrNotFound.
func (s *Store) DeleteHubSession(id string, ev AuditEvent) error {
	err := s.commit(func() (txn, error) {
		return ops(conds(storage.Exists(key(hubSessionsBucket, id))), opOf(storage.Delete(key(hubSessionsBucket, id))), s.appendAudit(ev))
	})
	if errors.Is(err, storage.ErrConflict) {
		return ErrNotFound
	}
	return err
}

// DeleteExpiredHubSessions removes the sessions that expired before now,
// and those whose record fails its check, and returns how many it removed.
func (s *Store) DeleteExpiredHubSessions(now time.Time) (int, error) {
	return s.deleteExpired(hubSessionsBucket, now, func(hash string, value []byte) (time.Time, error) {
		var h HubSession
		err := s.open(hubSessionsBucket, []byte(hash), value, &h)
		return h.ExpireTime, err
	})
}

// deleteExpired removes the records of a bucket that expired before now
// (expires opens one and says when it expires), and those that fail their
// check, and returns how many it removed.
func (s *Store) deleteExpired(bucket []byte, now time.Time, expires func(hash string, value []byte) (time.Time, error)) (int, error) {
	p, err := s.db.List(ctx, storage.Range{Prefix: key(bucket, "")})
	if err != nil {
		return 0, err
	}
	var doomed []storage.Op
	for _, rec := range p.Records {
		if t, err := expires(rec.Key[len(bucket)+1:], rec.Value); err == nil && t.After(now) {
			continue
		}
		doomed = append(doomed, storage.Delete(rec.Key))
	}
	for _, chunk := range s.db.Limits().Chunks(doomed) {
		if _, err := s.db.Txn(ctx, nil, chunk); err != nil {
			return 0, err
		}
	}
	return len(doomed), nil
}
