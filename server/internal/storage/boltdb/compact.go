package boltdb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
)

// compactTxBytes bounds each transaction of a compaction, so that copying
// a large audit trail does not hold it all in memory at once.
const compactTxBytes = 64 << 20

// CompactPending reports whether the file may still hold freed pages with
// shredded material: set by every commit with a shredding op, cleared by
// Compact.
func (d *DB) CompactPending() (bool, error) {
	pending := false
	err := d.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(metaBucket)); b != nil {
			pending = b.Get([]byte(compactPendingKey)) != nil
		}
		return nil
	})
	return pending, err
}

// Compact rewrites the database with its live records only and puts the
// new file in place of the old one, so that nothing deleted (a deleted
// account's wrapped data key and secrets, a removed secret, keys wrapped by
// an old master key) survives in freed pages. Calls wait while it runs.
// The new file is complete and synced before it replaces the old one by a
// rename, so a crash at any point leaves one of the two whole; the
// pending flag is cleared only in the new one.
func (d *DB) Compact() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	tmp := d.path + compactSuffix
	if err := os.Remove(tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dst, err := d.copyTo(tmp)
	if err != nil {
		return err
	}
	err = dst.Update(func(tx *bolt.Tx) error {
		if b := tx.Bucket([]byte(metaBucket)); b != nil {
			return b.Delete([]byte(compactPendingKey))
		}
		return nil
	})
	if err == nil {
		err = os.Rename(tmp, d.path)
	}
	if err == nil {
		err = syncDir(filepath.Dir(d.path))
	}
	if err != nil {
		dst.Close()
		os.Remove(tmp)
		return fmt.Errorf("compact the database: %w", err)
	}
	// dst holds the lock of the new file since before the rename, so no
	// other process can take the database in between.
	old := d.db
	d.db = dst
	return old.Close()
}

// Backup writes a compacted copy of the database, its live records as
// of one read transaction, to a new file at path (a backup), and returns
// its size.
func (d *DB) Backup(path string) (int64, error) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	dst, err := d.copyTo(path)
	if err != nil {
		return 0, err
	}
	// Cut the file to the pages in use, as bbolt's own snapshots are: a
	// backup cut shorter than that is then seen to be damaged.
	var size int64
	_ = dst.View(func(tx *bolt.Tx) error { size = tx.Size(); return nil })
	if err := dst.Close(); err != nil {
		return 0, err
	}
	return size, os.Truncate(path, size)
}

// copyTo copies the live records of the database into a new bbolt file at
// path (new, or an empty file), which it leaves open; s.mu must be held.
func (d *DB) copyTo(path string) (*bolt.DB, error) {
	dst, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, err
	}
	if err := d.db.View(func(src *bolt.Tx) error { return copyBuckets(src, dst) }); err != nil {
		dst.Close()
		os.Remove(path)
		return nil, err
	}
	return dst, nil
}

// copyBuckets copies every bucket of src into dst, committing every
// compactTxBytes. Every commit happens inside src's read transaction: the
// records being copied point into src's pages, which writers may reuse as
// soon as it ends. (bolt.Compact commits its last batch after its read
// transaction, so a backup taken while the broker served could hold
// records that pages reused by writers had overwritten.)
func copyBuckets(src *bolt.Tx, dst *bolt.DB) error {
	tx, err := dst.Begin(true)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	size := 0
	err = src.ForEach(func(name []byte, from *bolt.Bucket) error {
		to, err := tx.CreateBucket(name)
		if err == nil {
			err = to.SetSequence(from.Sequence())
		}
		if err != nil {
			return err
		}
		to.FillPercent = 1 // records are put in key order
		return from.ForEach(func(k, v []byte) error {
			if v == nil {
				return fmt.Errorf("bucket %q holds a bucket, which this version does not write", name)
			}
			if size += len(k) + len(v); size > compactTxBytes {
				if err := tx.Commit(); err != nil {
					return err
				}
				if tx, err = dst.Begin(true); err != nil {
					return err
				}
				to, size = tx.Bucket(name), len(k)+len(v)
				to.FillPercent = 1
			}
			return to.Put(k, v)
		})
	})
	if err != nil {
		return err
	}
	return tx.Commit()
}
