package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/server/internal/seal"
	"github.com/credbroker/credbroker/server/internal/store"
)

// RekeyResult says what Rekey did.
type RekeyResult struct {
	// Accounts is how many accounts' data keys were re-wrapped.
	Accounts int
	// AlreadyDone: the database was already under the new key (a re-run
	// after a rekey that completed), so nothing was written.
	AlreadyDone bool
}

// Rekey moves the database in cfg.DataDir from the master key cfg
// configures to newKey (in the text form of a master key file). It
// re-wraps the MAC key and every account's data key, leaving the data they
// seal as it is, in one transaction: interrupted at any point, the
// database opens with one of the two keys, and running Rekey again
// completes it. The broker must be stopped: it holds the database.
func Rekey(cfg Config, newKey string) (RekeyResult, error) {
	cfg.setDefaults()
	next, err := seal.ParseMasterKey(newKey)
	if err != nil {
		return RekeyResult{}, fmt.Errorf("new master key: %w", err)
	}
	path := filepath.Join(cfg.DataDir, dbFileName)
	if _, err := os.Stat(path); err != nil {
		return RekeyResult{}, fmt.Errorf("no database to rekey: %w", err)
	}
	current, err := loadMasterKey(cfg)
	if err != nil {
		return RekeyResult{}, err
	}
	st, err := openStopped(cfg, "rekeying")
	if err != nil {
		return RekeyResult{}, err
	}
	defer st.Close()

	check, err := st.KeyCheck()
	if err != nil {
		return RekeyResult{}, err
	}
	underCurrent, underNext := current.VerifyKeyCheck(check) == nil, next.VerifyKeyCheck(check) == nil
	switch {
	case underCurrent && underNext:
		return RekeyResult{}, errors.New("the new master key is the current one")
	case underNext:
		return RekeyResult{AlreadyDone: true}, nil
	case !underCurrent:
		return RekeyResult{}, fmt.Errorf("%w (data directory %s); nothing was changed", seal.ErrWrongMasterKey, cfg.DataDir)
	}
	newCheck, err := next.KeyCheck()
	if err != nil {
		return RekeyResult{}, err
	}
	rewrap := func(accountID string, wrapped []byte) ([]byte, error) {
		if accountID == "" {
			return current.RewrapMACKey(next, wrapped)
		}
		return current.RewrapDataKey(next, accountID, wrapped)
	}
	ev := store.AuditEvent{
		Time: time.Now(), Principal: fmt.Sprintf("unix-uid:%d", os.Getuid()), Method: "rekey",
		Code: codeName(codes.OK), Detail: "re-wrapped the MAC key and every account's data key under a new master key",
	}
	n, err := st.Rekey(newCheck, rewrap, ev)
	if err != nil {
		return RekeyResult{}, fmt.Errorf("rekey (nothing was changed): %w", err)
	}
	return RekeyResult{Accounts: n}, nil
}

// openStopped opens the database for an offline job (rekeying, restoring),
// which the broker must not be running during.
func openStopped(cfg Config, job string) (*store.Store, error) {
	st, err := store.Open(filepath.Join(cfg.DataDir, dbFileName), cfg.LockTimeout)
	if errors.Is(err, store.ErrLocked) {
		return nil, fmt.Errorf("%w (stop the broker before %s)", err, job)
	}
	return st, err
}
