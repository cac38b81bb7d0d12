package boltdb

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Bulk is one write transaction without the bounds of storage.Limits, for
// the jobs of a data directory that must change every record at once or
// not at all (tagging the records of an earlier version, moving to a new
// master key): only a local engine can do that atomically.
type Bulk struct {
	tx     *bolt.Tx
	writes *writes
}

// Bulk runs fn in one write transaction, committed if fn returns nil.
func (d *DB) Bulk(fn func(*Bulk) error) error {
	_, err := d.commit(func(tx *bolt.Tx, w *writes) error { return fn(&Bulk{tx: tx, writes: w}) })
	return err
}

// Get reads a record's value, or nil.
func (b *Bulk) Get(key string) ([]byte, error) {
	v, err := get(b.tx, key)
	return clone(v), err
}

// Put writes a record.
func (b *Bulk) Put(key string, value []byte) error {
	return b.writes.apply(b.tx, storage.Put(key, value))
}

// Delete removes a record, if there is one.
func (b *Bulk) Delete(key string) error { return b.writes.apply(b.tx, storage.Delete(key)) }

// Shred makes a compaction pending (see storage.Op.Shred).
func (b *Bulk) Shred() { b.writes.shred = true }

// List returns every record under prefix, read before any write that
// follows it.
func (b *Bulk) List(prefix string) ([]storage.Record, error) {
	bucket, name, err := split(prefix)
	if err != nil {
		return nil, err
	}
	bk := b.tx.Bucket(bucket)
	if bk == nil {
		return nil, nil
	}
	var out []storage.Record
	c := bk.Cursor()
	for k, v := c.Seek(name); k != nil && string(k[:min(len(k), len(name))]) == string(name); k, v = c.Next() {
		out = append(out, storage.Record{Key: string(bucket) + "/" + string(k), Value: clone(v), Version: versionOf(v)})
	}
	return out, nil
}

// ErrDamaged means a file is not a whole, undamaged bbolt database.
var ErrDamaged = errors.New("damaged")

// Verify checks every page of the database file at path, opened
// read-only, and that it is not cut off.
func Verify(path string) (err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	defer func() {
		if p := recover(); p != nil { // bbolt panics on some kinds of damage
			err = fmt.Errorf("%w: %v", ErrDamaged, p)
		}
	}()
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return db.View(func(tx *bolt.Tx) error {
		// A cut-off file would fault when its missing pages are read.
		if tx.Size() > fi.Size() {
			return fmt.Errorf("%w: it is cut off: %d of its %d bytes are there", ErrDamaged, fi.Size(), tx.Size())
		}
		var damage error
		for cerr := range tx.Check() { // read to the end: the check runs until then
			damage = cmp.Or(damage, cerr)
		}
		if damage != nil {
			return fmt.Errorf("%w: %w", ErrDamaged, damage)
		}
		return nil
	})
}
