// Package store keeps the broker's state in one bbolt file. It is the only
// package that imports bbolt. Every write is committed with fsync before
// the method returns, and bbolt's copy-on-write pages leave a consistent,
// openable file after a crash at any point.
//
// Records are this package's own versioned JSON, not API messages, so the
// API can change without a data migration. Secrets reach this package only
// sealed (see package seal). Every record is stored with a tag that
// authenticates it, its kind and its key (see Authenticate), so that a
// record changed by anyone without the master key is never used.
//
// bbolt keeps the pages it frees, with whatever they held, until it reuses
// them. Compact rewrites the file with live data only; it runs after a
// deletion of sealed material (see CompactPending) and for every backup.
package store

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/credbroker/credbroker/server/internal/seal"
)

var (
	// ErrNotFound means no record has the given id.
	ErrNotFound = errors.New("not found")
	// ErrExists means a record with the given id already exists.
	ErrExists = errors.New("already exists")
	// ErrLocked means another process holds the database file.
	ErrLocked = errors.New("database is locked by another process")
	// ErrIntegrity means a stored record failed its integrity check: it
	// was changed outside the broker, or copied from another database.
	ErrIntegrity = errors.New("the stored record failed its integrity check (it was changed outside the broker, or copied from another database), so it is not used")
)

// Store is the broker's database.
type Store struct {
	path string
	// mu is held for reading around every transaction, and for writing
	// while Compact puts a new file in place of the old one.
	mu   sync.RWMutex
	db   *bolt.DB
	auth *seal.RecordKey
	// auditEvents counts the stored audit events, so that pruning by
	// count does not walk the whole trail under the write lock. It changes
	// only when a transaction commits.
	auditEvents atomic.Int64
}

// Open opens (or creates, mode 0600) the database file at path. If another
// process holds the file, it gives up after lockTimeout with ErrLocked.
// Opening an existing file does not write to it. The store reads and
// writes records only once Authenticate has given it its key.
func Open(path string, lockTimeout time.Duration) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: could not lock %s within %s; is another credbroker using this data directory?", ErrLocked, path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, err
	}
	// A compaction that a crash interrupted; holding the lock proves that
	// no other process is writing it.
	if err := os.Remove(path + compactSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		db.Close()
		return nil, err
	}
	s := &Store{path: path, db: db}
	if err := s.createBuckets(); err != nil {
		db.Close()
		return nil, err
	}
	s.countAudit()
	return s, nil
}

// Close closes the database file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

// view and update run a transaction on the current file.
func (s *Store) view(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.View(fn)
}

func (s *Store) update(fn func(*bolt.Tx) error) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.db.Update(fn)
}

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

// DatabaseID returns the database's random id, or nil if it has none: a
// new database, or one written before records were tagged.
func (s *Store) DatabaseID() ([]byte, error) { return s.meta(databaseIDKey) }

// Authenticate gives the store the record key that master derives from the
// database's id, by which it tags every record it writes and checks every
// record it reads. The caller has checked master against the database's
// key check value: the one bound to its id, or, if it has no id, a check
// value of an earlier version (legacy).
//
// A database without an id gets one, with a key check value bound to it.
// If it is legacy, its records are tagged as they are, with ev in the
// audit trail, all in one transaction (a crash leaves it as it was, and
// the next start upgrades it again), and a compaction is made pending to
// remove the untagged copies and the old check value from the file. A
// database with records but neither an id nor a legacy check value was
// tampered with, and is refused. It returns how many records it tagged.
func (s *Store) Authenticate(master *seal.MasterKey, legacy bool, ev AuditEvent) (int, error) {
	id, err := s.DatabaseID()
	if err != nil {
		return 0, err
	}
	if id != nil {
		s.auth, err = master.RecordKey(id)
		return 0, err
	}
	id = make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return 0, err
	}
	auth, err := master.RecordKey(id)
	if err != nil {
		return 0, err
	}
	check, err := master.KeyCheck(id)
	if err != nil {
		return 0, err
	}
	s.auth = auth
	tagged := 0
	err = s.update(func(tx *bolt.Tx) error {
		if !legacy && !empty(tx) {
			return fmt.Errorf("%w: the database holds records but no master-key check of any version", ErrIntegrity)
		}
		var err error
		if tagged, err = retag(tx, nil, auth); err != nil {
			return err
		}
		meta := tx.Bucket(metaBucket)
		for k, v := range map[string][]byte{string(databaseIDKey): id, string(keyCheckKey): check} {
			if err := meta.Put([]byte(k), v); err != nil {
				return err
			}
		}
		if !legacy {
			return nil // a new database: nothing to record
		}
		if err := meta.Put(compactPendingKey, []byte("1")); err != nil {
			return err
		}
		ev.Detail = fmt.Sprintf("tagged the %d records of a database written by an earlier version, for integrity checks", tagged)
		return s.appendAudit(tx, ev)
	})
	if err != nil {
		s.auth = nil
		return 0, err
	}
	return tagged, nil
}

// empty reports whether the data buckets hold no record.
func empty(tx *bolt.Tx) bool {
	for _, name := range dataBuckets {
		if k, _ := tx.Bucket(name).Cursor().First(); k != nil {
			return false
		}
	}
	return true
}

// retag tags every record of the data buckets under to. With a nil from,
// they are records of an earlier version (bare JSON), taken as they are;
// otherwise each must pass its check under from first.
func retag(tx *bolt.Tx, from, to *seal.RecordKey) (int, error) {
	n := 0
	for _, name := range dataBuckets {
		b := tx.Bucket(name)
		// In chunks: a cursor is not to be trusted across writes.
		var after []byte
		for {
			var keys, values [][]byte
			c := b.Cursor()
			k, v := c.First()
			if after != nil {
				if k, v = c.Seek(after); k != nil && string(k) == string(after) {
					k, v = c.Next()
				}
			}
			for ; k != nil && len(keys) < 1000; k, v = c.Next() {
				keys, values = append(keys, copyBytes(k)), append(values, copyBytes(v))
			}
			if len(keys) == 0 {
				break
			}
			for i, k := range keys {
				data := values[i]
				if from != nil {
					var err error
					if data, err = verify(from, name, k, data); err != nil {
						return n, err
					}
				} else if len(data) == 0 || data[0] != '{' {
					return n, fmt.Errorf("%s %q: %w (a record of this version in a database without an id)", name, k, ErrIntegrity)
				}
				if err := b.Put(k, tag(to, name, k, data)); err != nil {
					return n, err
				}
				n++
			}
			after = keys[len(keys)-1]
		}
	}
	return n, nil
}

// taggedRecord is the first byte of every stored record; then come its
// tag (tagSize bytes) and its JSON. Records of earlier versions are bare
// JSON, starting with '{'.
const (
	taggedRecord byte = 1
	tagSize           = sha256.Size
)

// tag lays out a record for storage.
func tag(auth *seal.RecordKey, kind, key, data []byte) []byte {
	out := make([]byte, 0, 1+tagSize+len(data))
	out = append(out, taggedRecord)
	out = append(out, auth.Tag(kind, key, data)...)
	return append(out, data...)
}

// verify checks a stored record's tag and returns its JSON.
func verify(auth *seal.RecordKey, kind, key, stored []byte) ([]byte, error) {
	if len(stored) < 1+tagSize || stored[0] != taggedRecord {
		return nil, fmt.Errorf("%s %q: %w", kind, key, ErrIntegrity)
	}
	data := stored[1+tagSize:]
	if !hmac.Equal(stored[1:1+tagSize], auth.Tag(kind, key, data)) {
		return nil, fmt.Errorf("%s %q: %w", kind, key, ErrIntegrity)
	}
	return data, nil
}

// KeyCheck returns the stored master-key check value (see
// seal.MasterKey.KeyCheck), or nil in a new store.
func (s *Store) KeyCheck() ([]byte, error) { return s.meta(keyCheckKey) }

// WrappedMACKey returns the wrapped MAC key (see seal.MACKey), or nil if
// none is stored yet.
func (s *Store) WrappedMACKey() ([]byte, error) { return s.meta(macKeyKey) }

// SetWrappedMACKey stores the wrapped MAC key.
func (s *Store) SetWrappedMACKey(wrapped []byte) error { return s.setMeta(macKeyKey, wrapped) }

func (s *Store) meta(key []byte) ([]byte, error) {
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		out = copyBytes(tx.Bucket(metaBucket).Get(key))
		return nil
	})
	return out, err
}

func (s *Store) setMeta(key, value []byte) error {
	return s.update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put(key, value)
	})
}

// CreateAccount stores a new account together with its first token state
// and the audit event of the change, or returns ErrExists.
func (s *Store) CreateAccount(a Account, t TokenState, ev AuditEvent) error {
	a.Version, t.Version = recordVersion, recordVersion
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(accountsBucket).Get([]byte(a.ID)) != nil {
			return ErrExists
		}
		if err := s.put(tx, accountsBucket, a.ID, a); err != nil {
			return err
		}
		if err := s.put(tx, tokensBucket, a.ID, t); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// Account returns one account, ErrNotFound, or ErrIntegrity.
func (s *Store) Account(id string) (Account, error) {
	var a Account
	err := s.view(func(tx *bolt.Tx) error {
		return s.get(tx, accountsBucket, id, &a)
	})
	return a, err
}

// Accounts returns up to limit accounts whose id sorts after the given one,
// in id order. An account whose record fails its check is in the list
// with only its ID, marked Tampered.
func (s *Store) Accounts(after string, limit int) ([]Account, error) {
	return page[Account](s, accountsBucket, after, limit)
}

// listed is a pointer to a stored record type that lists return.
type listed[T any] interface {
	*T
	versioned
	// markTampered replaces a record that failed its check with one that
	// holds only its key.
	markTampered(key string)
}

// page returns up to limit records of a bucket whose key sorts after the
// given one, in key order.
func page[T any, P listed[T]](s *Store, bucket []byte, after string, limit int) ([]T, error) {
	var out []T
	err := s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			var r T
			err := s.open(bucket, k, v, P(&r))
			if errors.Is(err, ErrIntegrity) {
				P(&r).markTampered(string(k))
			} else if err != nil {
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
// for loading the broker at start-up. An account either of whose records
// fails its check comes with only its ID, marked Tampered.
func (s *Store) All() ([]Stored, error) {
	var out []Stored
	err := s.view(func(tx *bolt.Tx) error {
		return tx.Bucket(accountsBucket).ForEach(func(k, v []byte) error {
			var st Stored
			err := s.open(accountsBucket, k, v, &st.Account)
			if err == nil {
				if err = s.get(tx, tokensBucket, string(k), &st.TokenState); errors.Is(err, ErrNotFound) {
					err = nil
				}
			}
			if errors.Is(err, ErrIntegrity) {
				st = Stored{}
				st.Account.markTampered(string(k))
			} else if err != nil {
				return fmt.Errorf("account %q: %w", k, err)
			}
			out = append(out, st)
			return nil
		})
	})
	return out, err
}

// UpdateAccount applies change to a stored account and saves the result
// with the audit event of the change. If change returns an error nothing is
// written. A change that drops sealed material (a secret, a data key)
// makes a compaction pending.
func (s *Store) UpdateAccount(id string, change func(*Account) error, ev AuditEvent) (Account, error) {
	var a Account
	err := s.update(func(tx *bolt.Tx) error {
		if err := s.get(tx, accountsBucket, id, &a); err != nil {
			return err
		}
		before := a
		before.Secrets = append([]Secret(nil), a.Secrets...)
		if err := change(&a); err != nil {
			return err
		}
		a.Version = recordVersion
		if err := s.put(tx, accountsBucket, id, a); err != nil {
			return err
		}
		if dropsSealed(before, a) {
			if err := tx.Bucket(metaBucket).Put(compactPendingKey, []byte("1")); err != nil {
				return err
			}
		}
		return s.appendAudit(tx, ev)
	})
	return a, err
}

// dropsSealed reports whether after no longer holds a sealed value or the
// wrapped data key that before held.
func dropsSealed(before, after Account) bool {
	if string(before.WrappedKey) != string(after.WrappedKey) {
		return true
	}
	kept := map[string]bool{string(after.SealedSecret): true}
	for _, sec := range after.Secrets {
		kept[string(sec.Sealed)] = true
	}
	if !kept[string(before.SealedSecret)] {
		return true
	}
	for _, sec := range before.Secrets {
		if !kept[string(sec.Sealed)] {
			return true
		}
	}
	return false
}

// DeleteAccount removes an account, its wrapped data key and its token
// state, records the audit event of the change, and makes a compaction
// pending, which removes the deleted records from the file itself.
func (s *Store) DeleteAccount(id string, ev AuditEvent) error {
	return s.update(func(tx *bolt.Tx) error {
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
		if err := tx.Bucket(metaBucket).Put(compactPendingKey, []byte("1")); err != nil {
			return err
		}
		return s.appendAudit(tx, ev)
	})
}

// TokenState returns an account's token state; the zero TokenState if none is stored.
func (s *Store) TokenState(id string) (TokenState, error) {
	var t TokenState
	err := s.view(func(tx *bolt.Tx) error {
		err := s.get(tx, tokensBucket, id, &t)
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
	return s.update(func(tx *bolt.Tx) error {
		if tx.Bucket(accountsBucket).Get([]byte(id)) == nil {
			return ErrNotFound
		}
		var t TokenState
		if err := s.get(tx, tokensBucket, id, &t); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		change(&t)
		t.Version = recordVersion
		if err := s.put(tx, tokensBucket, id, t); err != nil || ev == nil {
			return err
		}
		return s.appendAudit(tx, *ev)
	})
}

// put stores a record under its tag.
func (s *Store) put(tx *bolt.Tx, bucket []byte, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put([]byte(id), tag(s.auth, bucket, []byte(id), data))
}

// get reads a record: ErrNotFound, ErrIntegrity, or the record.
func (s *Store) get(tx *bolt.Tx, bucket []byte, id string, v any) error {
	stored := tx.Bucket(bucket).Get([]byte(id))
	if stored == nil {
		return ErrNotFound
	}
	return s.open(bucket, []byte(id), stored, v)
}

// open checks a stored record and decodes it.
func (s *Store) open(bucket, key, stored []byte, v any) error {
	data, err := verify(s.auth, bucket, key, stored)
	if err != nil {
		return err
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

// syncDir makes a renamed file's directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}
