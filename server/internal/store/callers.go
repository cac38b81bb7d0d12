package store

import (
	"errors"

	bolt "go.etcd.io/bbolt"
)

// ErrBootstrapped means the store already received its first admin.
var ErrBootstrapped = errors.New("the store was bootstrapped before")

// Bootstrap stores the first admin identity (a caller key, an admin
// principal, or both) with its audit event, once in the store's life, and
// only in a store that holds no record yet. Later calls return
// ErrBootstrapped and write nothing.
func (s *Store) Bootstrap(k *CallerKey, admin *AdminPrincipal, ev AuditEvent) error {
	return s.update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if bootstrapped(tx) {
			return ErrBootstrapped
		}
		if k != nil {
			k.Version = recordVersion
			if err := s.put(tx, callerKeysBucket, k.ID, k); err != nil {
				return err
			}
		}
		if admin != nil {
			admin.Version = recordVersion
			if err := s.put(tx, adminsBucket, admin.Principal, admin); err != nil {
				return err
			}
		}
		if err := meta.Put(bootstrappedKey, []byte("1")); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// Bootstrapped says whether Bootstrap has run on this store, or would
// refuse to.
func (s *Store) Bootstrapped() (bool, error) {
	var done bool
	err := s.view(func(tx *bolt.Tx) error { done = bootstrapped(tx); return nil })
	return done, err
}

// bootstrapped: the flag is set, or the store holds records. The flag
// alone is not authenticated: someone who deleted it from a database in
// use would otherwise have the broker make a new admin key.
func bootstrapped(tx *bolt.Tx) bool {
	return tx.Bucket(metaBucket).Get(bootstrappedKey) != nil || !empty(tx)
}

// CreateCallerKey stores a new caller key with its audit event, or returns
// ErrExists (revoked keys stay stored, so an id is never reused).
func (s *Store) CreateCallerKey(k CallerKey, ev AuditEvent) error {
	k.Version = recordVersion
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(callerKeysBucket).Get([]byte(k.ID)) != nil {
			return ErrExists
		}
		if err := s.put(tx, callerKeysBucket, k.ID, k); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// UpdateCallerKey applies change to a stored caller key and saves it with
// its audit event, or returns ErrNotFound. A key whose record fails its
// integrity check reaches change marked Tampered, with only its ID.
func (s *Store) UpdateCallerKey(id string, change func(*CallerKey), ev AuditEvent) (CallerKey, error) {
	var k CallerKey
	err := s.update(func(tx *bolt.Tx) error {
		err := s.get(tx, callerKeysBucket, id, &k)
		if errors.Is(err, ErrIntegrity) {
			k.markTampered(id)
		} else if err != nil {
			return err
		}
		change(&k)
		k.Version, k.Tampered = recordVersion, false
		if err := s.put(tx, callerKeysBucket, id, k); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
	return k, err
}

// CallerKeys returns up to limit caller keys whose id sorts after the given
// one, in id order.
func (s *Store) CallerKeys(after string, limit int) ([]CallerKey, error) {
	return page[CallerKey](s, callerKeysBucket, after, limit)
}

// PutAdmin stores an admin principal with its audit event, replacing any
// stored record of the same principal.
func (s *Store) PutAdmin(a AdminPrincipal, ev AuditEvent) error {
	a.Version = recordVersion
	return s.update(func(tx *bolt.Tx) error {
		if err := s.put(tx, adminsBucket, a.Principal, a); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// DeleteAdmin removes an admin principal and records its audit event, or
// returns ErrNotFound.
func (s *Store) DeleteAdmin(principal string, ev AuditEvent) error {
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(adminsBucket)
		if b.Get([]byte(principal)) == nil {
			return ErrNotFound
		}
		if err := b.Delete([]byte(principal)); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// Admins returns up to limit admin principals after the given one, in
// order; those whose record fails its check are marked Tampered.
func (s *Store) Admins(after string, limit int) ([]AdminPrincipal, error) {
	return page[AdminPrincipal](s, adminsBucket, after, limit)
}
