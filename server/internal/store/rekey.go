package store

import (
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Rewrap re-wraps one wrapped key under the new master key; accountID is
// empty for the MAC key.
type Rewrap func(accountID string, wrapped []byte) ([]byte, error)

// Rekey moves the store to a new master key: it replaces the key check
// value with check, re-wraps the MAC key and every account's data key with
// rewrap, and records ev, all in one transaction. A crash at any point
// leaves the store wholly under the old key or wholly under the new one.
// It returns how many accounts it re-wrapped.
func (s *Store) Rekey(check []byte, rewrap Rewrap, ev AuditEvent) (int, error) {
	accounts := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if wrapped := meta.Get(macKeyKey); wrapped != nil {
			rewrapped, err := rewrap("", wrapped)
			if err != nil {
				return fmt.Errorf("MAC key: %w", err)
			}
			if err := meta.Put(macKeyKey, rewrapped); err != nil {
				return err
			}
		}
		b := tx.Bucket(accountsBucket)
		var ids []string
		if err := b.ForEach(func(k, _ []byte) error { ids = append(ids, string(k)); return nil }); err != nil {
			return err
		}
		for _, id := range ids {
			var a Account
			if err := get(b, id, &a); err != nil {
				return err
			}
			rewrapped, err := rewrap(a.ID, a.WrappedKey)
			if err != nil {
				return fmt.Errorf("data key of account %q: %w", id, err)
			}
			a.WrappedKey = rewrapped
			if err := put(b, id, a); err != nil {
				return err
			}
		}
		accounts = len(ids)
		if err := meta.Put(keyCheckKey, check); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
	return accounts, err
}
