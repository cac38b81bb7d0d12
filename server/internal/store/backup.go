package store

import (
	"errors"
	"fmt"
	"strings"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// ErrNotABackup means a file is not a whole, undamaged credbroker database.
var ErrNotABackup = errors.New("not a credbroker database, or a damaged one")

// CheckBackup checks every page of the database file at path, opened
// read-only, and that it is a credbroker database, and returns its
// master-key check value (see KeyCheck) and its database id (nil for a
// database written before records were tagged).
func CheckBackup(path string) (check, databaseID []byte, err error) {
	if err := boltdb.Verify(path); err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	db, err := boltdb.OpenReadOnly(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	s := &Store{db: db}
	if check, err = s.KeyCheck(); err == nil && check == nil {
		err = errors.New("it has no master-key check value")
	}
	if err == nil {
		databaseID, err = s.DatabaseID()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	return check, databaseID, nil
}

// CheckRecords checks every record of the database file at path (a
// backup, checked with CheckBackup, whose key check value master has
// verified for its id) with master's record key, and fails naming the
// records that do not pass.
func CheckRecords(path string, masters *keyring.Masters) error {
	db, err := boltdb.OpenReadOnly(path)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNotABackup, path, err)
	}
	defer db.Close()
	s := &Store{db: db}
	id, err := s.DatabaseID()
	if err != nil {
		return err
	}
	if err := masters.Bind(id); err != nil {
		return err
	}
	var failed []string
	for _, name := range dataBuckets {
		p, err := db.List(ctx, storage.Range{Prefix: key(name, "")})
		if err != nil {
			return err
		}
		for _, r := range p.Records {
			k := []byte(r.Key[len(name)+1:])
			if _, _, err := masters.OpenRecord(name, k, r.Value); err != nil {
				failed = append(failed, fmt.Sprintf("%s %q", name, k))
			}
		}
	}
	if len(failed) > 5 {
		failed = append(failed[:5], fmt.Sprintf("and %d more", len(failed)-5))
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s", ErrIntegrity, strings.Join(failed, ", "))
	}
	return nil
}
