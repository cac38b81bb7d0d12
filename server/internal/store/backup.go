package store

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Snapshot writes a consistent copy of the whole database to w, taken in
// one read transaction while writers carry on, and returns its size.
func (s *Store) Snapshot(w io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

// ErrNotABackup means a file is not a whole, undamaged credbroker database.
var ErrNotABackup = errors.New("not a credbroker database, or a damaged one")

// CheckBackup opens the database file at path read-only, checks every page
// of it and that it is a credbroker database, and returns its master-key
// check value (see KeyCheck).
func CheckBackup(path string) (check []byte, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	defer func() {
		if p := recover(); p != nil { // bbolt panics on some kinds of damage
			err = fmt.Errorf("%w: %s: %v", ErrNotABackup, path, p)
		}
	}()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	err = db.View(func(tx *bolt.Tx) error {
		// A cut-off file would fault when its missing pages are read.
		if tx.Size() > fi.Size() {
			return fmt.Errorf("it is cut off: %d of its %d bytes are there", fi.Size(), tx.Size())
		}
		var damage error
		for cerr := range tx.Check() { // read to the end: the check runs until then
			damage = cmp.Or(damage, cerr)
		}
		if damage != nil {
			return damage
		}
		for _, b := range allBuckets {
			if tx.Bucket(b) == nil {
				return fmt.Errorf("bucket %q is missing", b)
			}
		}
		check = copyBytes(tx.Bucket(metaBucket).Get(keyCheckKey))
		if check == nil {
			return errors.New("it has no master-key check value")
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	return check, nil
}
