package store

import (
	"fmt"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// Rekey moves the store from the master key current to next in one
// transaction: every account gets a fresh data key wrapped by next, its
// secrets and cached token sealed again with it (keyring.MasterKey.Reseal),
// the MAC key is re-wrapped, every record is tagged under next's record
// key, the key check value is replaced, and ev is recorded. A crash at any
// point leaves the store wholly under the old key or wholly under the new
// one. A record that fails its check under the old key stops it, changing
// nothing. It returns how many accounts it moved. The old key's material
// stays in freed pages until Compact, which it makes pending.
func (s *Store) Rekey(current, next *keyring.MasterKey, ev AuditEvent) (int, error) {
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
	l, err := s.local()
	if err != nil {
		return 0, err
	}
	err = l.Bulk(func(b *boltdb.Bulk) error {
		macKey := key(metaBucket, string(macKeyKey))
		wrapped, err := b.Get(macKey)
		if err != nil {
			return err
		}
		if wrapped != nil {
			rewrapped, err := current.RewrapMACKey(next, wrapped)
			if err != nil {
				return fmt.Errorf("MAC key: %w", err)
			}
			if err := b.Put(macKey, rewrapped); err != nil {
				return err
			}
		}
		// Check and re-tag every record first, then re-seal the accounts
		// under the new tags.
		if _, err := retag(b, old, nextAuth); err != nil {
			return err
		}
		s.auth = nextAuth
		records, err := b.List(key(accountsBucket, ""))
		if err != nil {
			return err
		}
		for _, r := range records {
			id := r.Key[len(accountsBucket)+1:]
			var a Account
			var t TokenState
			if err := s.open(accountsBucket, []byte(id), r.Value, &a); err != nil {
				return err
			}
			tokens, err := b.Get(key(tokensBucket, id))
			if err != nil {
				return err
			}
			if tokens != nil {
				if err := s.open(tokensBucket, []byte(id), tokens, &t); err != nil {
					return err
				}
			}
			if err := reseal(current, next, &a, &t); err != nil {
				return fmt.Errorf("account %q: %w", id, err)
			}
			if err := s.bulkPut(b, accountsBucket, id, a); err != nil {
				return err
			}
			if t.Version != 0 {
				if err := s.bulkPut(b, tokensBucket, id, t); err != nil {
					return err
				}
			}
		}
		accounts = len(records)
		if err := b.Put(key(metaBucket, string(keyCheckKey)), check); err != nil {
			return err
		}
		b.Shred()
		return s.bulkAudit(b, ev)
	})
	if err != nil {
		s.auth = old
		return 0, err
	}
	s.auditEvents.Add(1)
	return accounts, nil
}

// bulkPut stores a record under its tag in a bulk transaction.
func (s *Store) bulkPut(b *boltdb.Bulk, bucket []byte, id string, v any) error {
	put := s.put(bucket, id, v)
	if put.err != nil {
		return put.err
	}
	return b.Put(put.op.Key, put.op.Value)
}

// reseal moves an account and its token state to a fresh data key wrapped
// by next.
func reseal(current, next *keyring.MasterKey, a *Account, t *TokenState) error {
	var values []keyring.Sealed
	for i := range a.Secrets {
		values = append(values, keyring.Sealed{Field: keyring.FieldClientSecret, Value: &a.Secrets[i].Sealed})
	}
	if len(a.SealedSecret) > 0 {
		values = append(values, keyring.Sealed{Field: keyring.FieldClientSecret, Value: &a.SealedSecret})
	}
	if len(t.SealedToken) > 0 {
		values = append(values, keyring.Sealed{Field: keyring.FieldAccessToken, Value: &t.SealedToken})
	}
	wrapped, err := current.Reseal(next, a.ID, a.WrappedKey, values)
	a.WrappedKey = wrapped
	return err
}
