package store

import (
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Rekeying is how Rekey moves the store to a new master key.
type Rekeying struct {
	// Check is the new master key's check value.
	Check []byte
	// KeyFor derives the new record key from the database's id.
	KeyFor func(databaseID []byte) (Authenticator, error)
	// RewrapMAC re-wraps the MAC key under the new master key.
	RewrapMAC func(wrapped []byte) ([]byte, error)
	// Reseal moves an account and its token state to a fresh data key
	// wrapped by the new master key (see seal.MasterKey.Reseal).
	Reseal func(*Account, *TokenState) error
}

// Rekey moves the store to a new master key in one transaction: every
// account gets a fresh data key (r.Reseal), the MAC key is re-wrapped,
// every record is tagged under the new record key, the key check value is
// replaced, and ev is recorded. A crash at any point leaves the store
// wholly under the old key or wholly under the new one. A record that
// fails its check under the old key stops it, changing nothing. It returns
// how many accounts it moved. The old key's material stays in freed pages
// until Compact.
func (s *Store) Rekey(r Rekeying, ev AuditEvent) (int, error) {
	id, err := s.meta(databaseIDKey)
	if err != nil {
		return 0, err
	}
	next, err := r.KeyFor(id)
	if err != nil {
		return 0, err
	}
	old, accounts := s.auth, 0
	err = s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if wrapped := meta.Get(macKeyKey); wrapped != nil {
			rewrapped, err := r.RewrapMAC(wrapped)
			if err != nil {
				return fmt.Errorf("MAC key: %w", err)
			}
			if err := meta.Put(macKeyKey, rewrapped); err != nil {
				return err
			}
		}
		// Check and re-tag every record first, then re-seal the accounts
		// under the new tags.
		if _, err := retag(tx, old, next); err != nil {
			return err
		}
		s.auth = next
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
			if err := r.Reseal(&a, &t); err != nil {
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
		if err := meta.Put(keyCheckKey, r.Check); err != nil {
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
