package store

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// CompactPending reports whether the engine's files may still hold
// deleted sealed material (bbolt: in freed pages; etcd: in its history): set by the transaction of every deletion of an
// account, a secret or a data key, and cleared by Compact.
func (s *Store) CompactPending() (bool, error) {
	c, ok := s.db.(compacter)
	if !ok {
		return false, nil // the engine compacts by itself
	}
	return c.CompactPending()
}

// Compact removes deleted sealed material (a deleted account's wrapped
// data key and secrets, a removed secret, keys wrapped by an old master
// key) from the engine's files. On bbolt it rewrites the database with its
// live records only, while calls wait; a crash at any point leaves the
// old file or the new one, whole. On etcd it compacts the history (see
// etcd.DB.Compact for what stays in etcd's write-ahead log).
func (s *Store) Compact() error {
	c, ok := s.db.(compacter)
	if !ok {
		return ErrNotLocal
	}
	return c.Compact()
}

// CompactTo writes a compacted copy of the database, its live records as
// of one revision, to a new bbolt file at path (a backup), and returns its
// size. On bbolt it is a copy made in one read transaction; on etcd, the
// records read at one revision (see storage.Snapshotter), written in the
// same form, so that either engine's backup restores into either.
func (s *Store) CompactTo(path string) (int64, error) {
	if l, err := s.local(); err == nil {
		return l.Backup(path)
	}
	snap, ok := s.db.(storage.Snapshotter)
	if !ok {
		return 0, ErrNotLocal
	}
	out, err := boltdb.Open(path, time.Second, Logs...)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	var batch []storage.Record
	flush := func() error {
		err := out.Bulk(func(b *boltdb.Bulk) error {
			for _, r := range batch {
				if err := b.Put(r.Key, r.Value); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	_, err = snap.Snapshot(ctx, func(r storage.Record) error {
		if batch = append(batch, r); len(batch) == copyBatch {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err == nil {
		err = out.Close()
	}
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// copyBatch is how many records a copy between engines writes at a time.
const copyBatch = 10_000

// LoadBackup reads every record of the backup file at path, checked
// already (CheckBackup, CheckRecords), and hands them to load, an empty
// engine's loader (etcd.DB.Load).
func LoadBackup(path string, load func(context.Context, func(put func(storage.Record) error) error) error) error {
	db, err := boltdb.OpenReadOnly(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	return load(ctx, func(put func(storage.Record) error) error {
		for _, kind := range append([][]byte{metaBucket}, dataBuckets...) {
			r := storage.Range{Prefix: key(kind, ""), Limit: copyBatch}
			for {
				p, err := db.List(ctx, r)
				if err != nil {
					return err
				}
				for _, rec := range p.Records {
					if err := put(rec); err != nil {
						return err
					}
				}
				if !p.More {
					break
				}
				r.After = p.Records[len(p.Records)-1].Key
			}
		}
		return nil
	})
}

// TrimHistory lets an engine that keeps a history of overwritten and
// deleted values (etcd) drop what is older than it keeps (see
// etcd.DB.TrimHistory); call it periodically.
func (s *Store) TrimHistory() error {
	if t, ok := s.db.(interface{ TrimHistory(time.Time) error }); ok {
		return t.TrimHistory(time.Now())
	}
	return nil
}

// ReleasePages lets the engine give back the memory of what it has read
// (see boltdb.DB.ReleasePages); engines that hold no such memory do
// nothing.
func (s *Store) ReleasePages() error {
	if r, ok := s.db.(interface{ ReleasePages() error }); ok {
		return r.ReleasePages()
	}
	return nil
}
