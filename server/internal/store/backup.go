package store

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/server/internal/seal"
)

// ErrNotABackup means a file is not a whole, undamaged credbroker database.
var ErrNotABackup = errors.New("not a credbroker database, or a damaged one")

// CheckBackup opens the database file at path read-only, checks every page
// of it and that it is a credbroker database, and returns its master-key
// check value (see KeyCheck) and its database id (nil for a database
// written before records were tagged).
func CheckBackup(path string) (check, databaseID []byte, err error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	defer func() {
		if p := recover(); p != nil { // bbolt panics on some kinds of damage
			err = fmt.Errorf("%w: %s: %v", ErrNotABackup, path, p)
		}
	}()
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
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
		databaseID = copyBytes(tx.Bucket(metaBucket).Get(databaseIDKey))
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	return check, databaseID, nil
}

// CheckRecords checks every record of the database file at path (a
// backup, checked with CheckBackup, whose key check value master has
// verified for its id) with master's record key, and fails naming the
// records that do not pass.
func CheckRecords(path string, master *seal.MasterKey) error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	var failed []string
	err = db.View(func(tx *bolt.Tx) error {
		auth, err := master.RecordKey(tx.Bucket(metaBucket).Get(databaseIDKey))
		if err != nil {
			return err
		}
		for _, name := range dataBuckets {
			err := tx.Bucket(name).ForEach(func(k, v []byte) error {
				if _, err := verify(auth, name, k, v); err != nil {
					failed = append(failed, fmt.Sprintf("%s %q", name, k))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if len(failed) > 5 {
		failed = append(failed[:5], fmt.Sprintf("and %d more", len(failed)-5))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(failed, ", "))
	}
	return nil
}
