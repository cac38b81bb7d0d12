package datadir

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// RekeyResult says what Rekey did.
type RekeyResult struct {
	// Accounts is how many accounts this run moved to fresh data keys
	// (a re-run after an interrupted one moves those left), and Records
	// how many other records it tagged anew.
	Accounts, Records int
	// AlreadyDone: the database was already under the new key (a re-run
	// after a rekey that completed), so only a pending compaction ran.
	AlreadyDone bool
}

// Rekey moves the database in cfg.DataDir from the master key cfg
// configures to newKey (in the text form of a master key file), as a
// running broker's rotation does (store.Store.RotateMasterKey): every
// account gets a fresh data key wrapped by the new master key, its
// secrets and cached token sealed again with it, the MAC key is re-wrapped
// (so caller keys keep working) and every record is tagged under the new
// key; then it compacts the file, so that nothing the old master key
// opens (or the old data keys open) is left in it. Interrupted at any
// point, running Rekey again completes it; meanwhile the broker starts
// only with both keys. The broker must be stopped: it holds the database.
func Rekey(cfg Config, newKey string) (RekeyResult, error) {
	cfg = WithDefaults(cfg)
	next, err := keyring.ParseMasterKey(newKey)
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
	if current.ID() == next.ID() {
		return RekeyResult{}, errors.New("the new master key is the current one")
	}
	st, err := openStopped(cfg, "rekeying")
	if err != nil {
		return RekeyResult{}, err
	}
	defer st.Close()

	masters := keyring.NewMasters(next, current)
	legacy, err := checkMasterKey(st, keyring.NewMasters(current))
	if errors.Is(err, keyring.ErrWrongMasterKey) {
		legacy, err = checkMasterKey(st, masters)
	}
	if errors.Is(err, keyring.ErrWrongMasterKey) {
		return RekeyResult{}, fmt.Errorf("%w (data directory %s); nothing was changed", err, cfg.DataDir)
	}
	if err != nil {
		return RekeyResult{}, err
	}
	if legacy {
		masters.Use(current) // its records are tagged under it first
	}
	if _, err := st.Authenticate(masters, legacy, upgradeEvent()); err != nil {
		return RekeyResult{}, err
	}
	ev := store.AuditEvent{
		Time: time.Now(), Principal: fmt.Sprintf("unix-uid:%d", os.Getuid()), Method: "rekey",
		Code: "OK", Detail: "moved every account to a fresh data key and re-wrapped the MAC key under a new master key",
	}
	r, err := st.RotateMasterKey(next, &ev)
	if err != nil {
		if pending, _ := st.PendingRotation(); pending != nil {
			return RekeyResult{}, fmt.Errorf("rekey (run it again to finish it; until then the broker starts only with both keys): %w", err)
		}
		return RekeyResult{}, fmt.Errorf("rekey (nothing was changed): %w", err)
	}
	res := RekeyResult{Accounts: r.Accounts, Records: r.Records, AlreadyDone: r.From == ""}
	if !res.AlreadyDone {
		ev.Time, ev.Detail = time.Now(), fmt.Sprintf("the database is under master key %s: this run moved %d accounts to fresh data keys and tagged %d other records anew", r.To, r.Accounts, r.Records)
		if err := st.AppendAudit([]store.AuditEvent{ev}); err != nil {
			return res, err
		}
	}
	return res, CompactIfPending(st)
}

// CompactIfPending compacts the store if a deletion (or a rekey) left
// freed pages with sealed material in its file.
func CompactIfPending(st *store.Store) error {
	pending, err := st.CompactPending()
	if err != nil || !pending {
		return err
	}
	return st.Compact()
}

// upgradeEvent is the audit event of tagging a database written by an
// earlier version (see store.Authenticate), an action of the broker's own
// (principal "credbroker").
func upgradeEvent() store.AuditEvent {
	return audit.Own(time.Now(), "tag_records", "", "")
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
