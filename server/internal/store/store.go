// Package store keeps the broker's state in one bbolt file. It is the only
// package that imports bbolt. Every write is committed with fsync before
// the method returns, and bbolt's copy-on-write pages leave a consistent,
// openable file after a crash at any point.
//
// Records are this package's own versioned JSON, not API messages, so the
// API can change without a data migration. Secrets reach this package only
// sealed (see package seal).
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

var (
	// ErrNotFound means no record has the given id.
	ErrNotFound = errors.New("not found")
	// ErrExists means a record with the given id already exists.
	ErrExists = errors.New("already exists")
	// ErrLocked means another process holds the database file.
	ErrLocked = errors.New("database is locked by another process")
)

// Store is the broker's database.
type Store struct {
	db *bolt.DB
	// auditEvents counts the stored audit events, so that pruning by
	// count does not walk the whole trail under the write lock. It changes
	// only when a transaction commits.
	auditEvents atomic.Int64
}

// Open opens (or creates, mode 0600) the database file at path. If another
// process holds the file, it gives up after lockTimeout with ErrLocked.
// Opening an existing file does not write to it.
func Open(path string, lockTimeout time.Duration) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%w: could not lock %s within %s; is another credbroker using this data directory?", ErrLocked, path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{db: db}
	if err := s.createBuckets(); err != nil {
		db.Close()
		return nil, err
	}
	s.countAudit()
	return s, nil
}

// Close closes the database file.
func (s *Store) Close() error { return s.db.Close() }

// createBuckets writes only when a bucket is missing, so opening an existing
// database (for example with the wrong master key) leaves the file as it was.
func (s *Store) createBuckets() error {
	missing := false
	_ = s.db.View(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				missing = true
			}
		}
		return nil
	})
	if !missing {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		for _, b := range allBuckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
}

// KeyCheck returns the stored master-key check value, or nil in a new store.
func (s *Store) KeyCheck() ([]byte, error) { return s.meta(keyCheckKey) }

// SetKeyCheck stores the master-key check value.
func (s *Store) SetKeyCheck(check []byte) error { return s.setMeta(keyCheckKey, check) }

// WrappedMACKey returns the wrapped MAC key (see seal.MACKey), or nil if
// none is stored yet.
func (s *Store) WrappedMACKey() ([]byte, error) { return s.meta(macKeyKey) }

// SetWrappedMACKey stores the wrapped MAC key.
func (s *Store) SetWrappedMACKey(wrapped []byte) error { return s.setMeta(macKeyKey, wrapped) }

func (s *Store) meta(key []byte) ([]byte, error) {
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
		out = copyBytes(tx.Bucket(metaBucket).Get(key))
		return nil
	})
	return out, err
}

func (s *Store) setMeta(key, value []byte) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put(key, value)
	})
}

// CreateAccount stores a new account together with its first token state
// and the audit event of the change, or returns ErrExists.
func (s *Store) CreateAccount(a Account, t TokenState, ev AuditEvent) error {
	a.Version, t.Version = recordVersion, recordVersion
	return s.db.Update(func(tx *bolt.Tx) error {
		accounts := tx.Bucket(accountsBucket)
		if accounts.Get([]byte(a.ID)) != nil {
			return ErrExists
		}
		if err := put(accounts, a.ID, a); err != nil {
			return err
		}
		if err := put(tx.Bucket(tokensBucket), a.ID, t); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// Account returns one account or ErrNotFound.
func (s *Store) Account(id string) (Account, error) {
	var a Account
	err := s.db.View(func(tx *bolt.Tx) error {
		return get(tx.Bucket(accountsBucket), id, &a)
	})
	return a, err
}

// Accounts returns up to limit accounts whose id sorts after the given one,
// in id order.
func (s *Store) Accounts(after string, limit int) ([]Account, error) {
	return page[Account](s, accountsBucket, after, limit)
}

// record is a pointer to a stored record type.
type record[T any] interface {
	*T
	versioned
}

// page returns up to limit records of a bucket whose key sorts after the
// given one, in key order.
func page[T any, P record[T]](s *Store, bucket []byte, after string, limit int) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			var r T
			if err := decode(v, P(&r)); err != nil {
				return fmt.Errorf("%s %q: %w", bucket, k, err)
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Stored is an account together with its token state.
type Stored struct {
	Account    Account
	TokenState TokenState
}

// All returns every account with its token state, read in one transaction,
// for loading the broker at start-up.
func (s *Store) All() ([]Stored, error) {
	var out []Stored
	err := s.db.View(func(tx *bolt.Tx) error {
		tokens := tx.Bucket(tokensBucket)
		return tx.Bucket(accountsBucket).ForEach(func(k, v []byte) error {
			var st Stored
			if err := decode(v, &st.Account); err != nil {
				return fmt.Errorf("account %q: %w", k, err)
			}
			if err := get(tokens, string(k), &st.TokenState); err != nil && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("token state of %q: %w", k, err)
			}
			out = append(out, st)
			return nil
		})
	})
	return out, err
}

// UpdateAccount applies change to a stored account and saves the result
// with the audit event of the change. If change returns an error nothing is
// written.
func (s *Store) UpdateAccount(id string, change func(*Account) error, ev AuditEvent) (Account, error) {
	var a Account
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(accountsBucket)
		if err := get(b, id, &a); err != nil {
			return err
		}
		if err := change(&a); err != nil {
			return err
		}
		a.Version = recordVersion
		if err := put(b, id, a); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
	return a, err
}

// DeleteAccount removes an account, its wrapped data key and its token
// state, and records the audit event of the change.
func (s *Store) DeleteAccount(id string, ev AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		accounts := tx.Bucket(accountsBucket)
		if accounts.Get([]byte(id)) == nil {
			return ErrNotFound
		}
		if err := accounts.Delete([]byte(id)); err != nil {
			return err
		}
		if err := tx.Bucket(tokensBucket).Delete([]byte(id)); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// TokenState returns an account's token state; the zero TokenState if none is stored.
func (s *Store) TokenState(id string) (TokenState, error) {
	var t TokenState
	err := s.db.View(func(tx *bolt.Tx) error {
		err := get(tx.Bucket(tokensBucket), id, &t)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		return err
	})
	return t, err
}

// UpdateTokenState applies change to an account's token state (the zero
// TokenState if none is stored) and saves it, with ev (if not nil) in the
// audit trail, or returns ErrNotFound if the account has been deleted
// meanwhile, so that a late refresh cannot bring a deleted account's token
// back.
func (s *Store) UpdateTokenState(id string, change func(*TokenState), ev *AuditEvent) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(accountsBucket).Get([]byte(id)) == nil {
			return ErrNotFound
		}
		b := tx.Bucket(tokensBucket)
		var t TokenState
		if err := get(b, id, &t); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		change(&t)
		t.Version = recordVersion
		if err := put(b, id, t); err != nil || ev == nil {
			return err
		}
		return s.appendAudit(tx, *ev)
	})
}

func put(b *bolt.Bucket, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(id), data)
}

func get(b *bolt.Bucket, id string, v any) error {
	data := b.Get([]byte(id))
	if data == nil {
		return ErrNotFound
	}
	return decode(data, v)
}

func decode(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("corrupt record: %w", err)
	}
	if ver := v.(versioned).version(); ver != recordVersion {
		return fmt.Errorf("record version %d is not supported by this build (want %d)", ver, recordVersion)
	}
	return nil
}

// copyBytes copies a value out of bbolt's mmap, which is only valid inside the transaction.
func copyBytes(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}
