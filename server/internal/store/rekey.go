package store

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/server/internal/seal"
)

// Rekey moves the store from the master key current to next in one
// transaction: every account gets a fresh data key wrapped by next, its
// secrets and cached token sealed again with it (seal.MasterKey.Reseal),
// the MAC key is re-wrapped, every record is tagged under next's record
// key, the key check value is replaced, and ev is recorded. A crash at any
// point leaves the store wholly under the old key or wholly under the new
// one. A record that fails its check under the old key stops it, changing
// nothing. It returns how many accounts it moved. The old key's material
// stays in freed pages until Compact, which it makes pending.
func (s *Store) Rekey(current, next *seal.MasterKey, ev AuditEvent) (int, error) {
	id, err := s.DatabaseID()
	if err != nil {
		return 0, err
	}
	nextAuth, err := next.RecordKey(id)
	if err != nil {
		return 0, err
	}
	check, err := next.KeyCheck(id)
	if err != nil {
		return 0, err
	}
	old, accounts := s.auth, 0
	err = s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if wrapped := meta.Get(macKeyKey); wrapped != nil {
			rewrapped, err := current.RewrapMACKey(next, wrapped)
			if err != nil {
				return fmt.Errorf("MAC key: %w", err)
			}
			if err := meta.Put(macKeyKey, rewrapped); err != nil {
				return err
			}
		}
		// Check and re-tag every record first, then re-seal the accounts
		// under the new tags.
		if _, err := retag(tx, old, nextAuth); err != nil {
			return err
		}
		s.auth = nextAuth
		var ids []string
		if err := tx.Bucket(accountsBucket).ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil }); err != nil {
			return err
		}
		for _, id := range ids {
			var a Account
			var t TokenState
			if err := s.get(tx, accountsBucket, id, &a); err != nil {
				return err
			}
			if err := s.get(tx, tokensBucket, id, &t); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			if err := reseal(current, next, &a, &t); err != nil {
				return fmt.Errorf("account %q: %w", id, err)
			}
			if err := s.put(tx, accountsBucket, id, a); err != nil {
				return err
			}
			if t.Version != 0 {
				if err := s.put(tx, tokensBucket, id, t); err != nil {
					return err
				}
			}
		}
		accounts = len(ids)
		if err := meta.Put(keyCheckKey, check); err != nil {
			return err
		}
		if err := meta.Put(compactPendingKey, []byte("1")); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
	if err != nil {
		s.auth = old
		return 0, err
	}
	return accounts, nil
}

// reseal moves an account and its token state to a fresh data key wrapped
// by next.
func reseal(current, next *seal.MasterKey, a *Account, t *TokenState) error {
	var values []seal.Sealed
	for i := range a.Secrets {
		values = append(values, seal.Sealed{Field: FieldClientSecret, Value: &a.Secrets[i].Sealed})
	}
	if len(a.SealedSecret) > 0 {
		values = append(values, seal.Sealed{Field: FieldClientSecret, Value: &a.SealedSecret})
	}
	if len(t.SealedToken) > 0 {
		values = append(values, seal.Sealed{Field: FieldAccessToken, Value: &t.SealedToken})
	}
	wrapped, err := current.Reseal(next, a.ID, a.WrappedKey, values)
	a.WrappedKey = wrapped
	return err
}
