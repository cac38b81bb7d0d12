package store

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// ErrBootstrapped means the store already received its first admin.
var ErrBootstrapped = errors.New("the store was bootstrapped before")

var bootstrappedMeta = key(metaBucket, string(bootstrappedKey))

// Bootstrap stores the first admin identity (a caller key, an admin
// principal, or both) with its audit event, once in the store's life, and
// only in a store that holds no record yet. Later calls return
// ErrBootstrapped and write nothing.
func (s *Store) Bootstrap(k *CallerKey, admin *AdminPrincipal, ev AuditEvent) error {
	return s.commit(func() (txn, error) {
		done, err := s.Bootstrapped()
		if err != nil {
			return txn{}, err
		}
		if done {
			return txn{}, ErrBootstrapped
		}
		var bs []built
		if k != nil {
			k.Version = recordVersion
			bs = append(bs, s.put(callerKeysBucket, k.ID, k))
			bs = append(bs, s.outbox(callerKeyEvents(nil, k, ev))...)
		}
		if admin != nil {
			admin.Version = recordVersion
			bs = append(bs, s.put(adminsBucket, admin.Principal, admin))
		}
		bs = append(bs, opOf(storage.Put(bootstrappedMeta, []byte("1"))), s.appendAudit(ev))
		return ops(conds(storage.VersionIs(bootstrappedMeta, storage.Absent)), bs...)
	})
}

// Bootstrapped says whether Bootstrap has run on this store, or would
// refuse to: the flag is set, or the store holds records. The flag alone
// is not authenticated: someone who deleted it from a database in use
// would otherwise have the broker make a new admin key.
func (s *Store) Bootstrapped() (bool, error) {
	if flag, err := s.meta(bootstrappedKey); err != nil || flag != nil {
		return flag != nil, err
	}
	return s.holdsRecords()
}

// CreateCallerKey stores a new caller key with its audit event, or returns
// ErrExists (a revoked key stays stored, and keeps its id, until it is
// deleted).
func (s *Store) CreateCallerKey(k CallerKey, ev AuditEvent) error {
	k.Version = recordVersion
	err := s.commit(func() (txn, error) {
		return ops(conds(storage.VersionIs(key(callerKeysBucket, k.ID), storage.Absent)),
			append([]built{s.put(callerKeysBucket, k.ID, k), s.appendAudit(ev)}, s.outbox(callerKeyEvents(nil, &k, ev))...)...)
	})
	if errors.Is(err, storage.ErrConflict) {
		return ErrExists
	}
	return err
}

// UpdateCallerKey applies change to a stored caller key and saves it with
// its audit event, or returns ErrNotFound. A key whose record fails its
// integrity check reaches change marked Tampered, with only its ID. A
// change that removes an admin identity (revokes an admin key) passes
// guard (see AdminGuard); other changes pass nil.
func (s *Store) UpdateCallerKey(id string, change func(*CallerKey), guard AdminGuard, ev AuditEvent) (CallerKey, error) {
	var k CallerKey
	err := s.commit(func() (txn, error) {
		k = CallerKey{}
		version, err := s.read(callerKeysBucket, id, &k)
		if errors.Is(err, ErrIntegrity) {
			k.markTampered(id)
		} else if err != nil {
			return txn{}, err
		}
		before := k
		change(&k)
		k.Version, k.Tampered = recordVersion, false
		return s.guarded(guard, conds(storage.VersionIs(key(callerKeysBucket, id), version)),
			append([]built{s.put(callerKeysBucket, id, k), s.appendAudit(ev)}, s.outbox(callerKeyEvents(&before, &k, ev))...)...)
	})
	return k, err
}

// DeleteCallerKey removes a caller key and records its audit event, or
// returns ErrNotFound; the keyed hash of its key stays behind (see
// KeyHashRetired). Removing a usable admin key passes guard (see
// AdminGuard).
func (s *Store) DeleteCallerKey(id string, hash []byte, guard AdminGuard, ev AuditEvent) error {
	return s.commit(func() (txn, error) {
		var k CallerKey
		version, err := s.read(callerKeysBucket, id, &k)
		if errors.Is(err, ErrIntegrity) {
			k.markTampered(id)
		} else if err != nil {
			return txn{}, err
		}
		bs := []built{opOf(storage.Delete(key(callerKeysBucket, id))), s.appendAudit(ev), opOf(storage.Put(retiredKeyHash(hash), []byte(id)))}
		return s.guarded(guard, conds(storage.VersionIs(key(callerKeysBucket, id), version)), append(bs, s.outbox(callerKeyEvents(&k, nil, ev))...)...)
	})
}

// KeyHashRetired says whether a deleted caller key had this keyed hash: a
// key once deleted is never taken again.
func (s *Store) KeyHashRetired(hash []byte) (bool, error) {
	_, err := s.db.Get(ctx, retiredKeyHash(hash))
	if errors.Is(err, storage.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// retiredKeyHash is where a deleted key's hash is kept.
func retiredKeyHash(hash []byte) string {
	return key(metaBucket, "retired-caller-key/"+hex.EncodeToString(hash))
}

// AdminGuard judges the removal of an admin identity (an admin key
// revoked, an admin principal deleted) on fresh reads of every caller key
// and admin principal, and returns an error to refuse it: the broker must
// always keep an admin.
type AdminGuard func(keys []CallerKey, admins []AdminPrincipal) error

// adminsGuard is rewritten by every removal of an admin identity, on the
// condition that it has not changed since the reads its guard judged: two
// removals, made on any replicas at once, are judged one after the other.
var adminsGuard = key(metaBucket, "admins-guard")

// guarded is the transaction of cs and bs; with a guard, also its check
// and the rewrite of adminsGuard.
func (s *Store) guarded(guard AdminGuard, cs []storage.Cond, bs ...built) (txn, error) {
	if guard == nil {
		return ops(cs, bs...)
	}
	r, err := s.db.Get(ctx, adminsGuard)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		return txn{}, err
	}
	keys, err := s.CallerKeys("", math.MaxInt)
	if err != nil {
		return txn{}, err
	}
	admins, err := s.Admins("", math.MaxInt)
	if err != nil {
		return txn{}, err
	}
	if err := guard(keys, admins); err != nil {
		return txn{}, err
	}
	stamp := make([]byte, 8)
	binary.BigEndian.PutUint64(stamp, uint64(time.Now().UnixNano()))
	return ops(append(cs, storage.VersionIs(adminsGuard, r.Version)), append(bs, opOf(storage.Put(adminsGuard, stamp)))...)
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
	return s.commit(func() (txn, error) {
		return ops(nil, s.put(adminsBucket, a.Principal, a), s.appendAudit(ev))
	})
}

// DeleteAdmin removes an admin principal and records its audit event, or
// returns ErrNotFound. Removing one that holds the role passes guard (see
// AdminGuard).
func (s *Store) DeleteAdmin(principal string, guard AdminGuard, ev AuditEvent) error {
	return s.deleteGuarded(key(adminsBucket, principal), guard, ev)
}

// deleteGuarded deletes the record at k, if it is there, passing guard,
// with its audit event.
func (s *Store) deleteGuarded(k string, guard AdminGuard, ev AuditEvent) error {
	return s.commit(func() (txn, error) {
		r, err := s.db.Get(ctx, k)
		if err != nil {
			return txn{}, err
		}
		return s.guarded(guard, conds(storage.VersionIs(k, r.Version)), opOf(storage.Delete(k)), s.appendAudit(ev))
	})
}

// Admins returns up to limit admin principals after the given one, in
// order; those whose record fails its check are marked Tampered.
func (s *Store) Admins(after string, limit int) ([]AdminPrincipal, error) {
	return page[AdminPrincipal](s, adminsBucket, after, limit)
}
