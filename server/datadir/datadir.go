// Package datadir owns the broker's data directory on disk: its database
// file and its master-key file (generated there for local use when no key
// is configured). It opens the directory for the running broker, keeps
// its database in order while it runs (the MAC key, reports of records
// that fail their integrity check, compaction after deletions), and it
// holds the tools that work on the directory while the broker is stopped:
// restoring a backup (and checking and saving backup files), and rekeying
// to a new master key.
package datadir

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/etcd"
	"github.com/credbroker/credbroker/server/internal/store"
)

// File names inside the data directory.
const (
	dbFileName        = "credbroker.db"
	masterKeyFileName = "master.key"
	// AuditJournalDir holds the audit events of the last moments, on
	// bbolt, until they are indexed into the database (audit.JournalSink).
	AuditJournalDir = "audit-journal"
)

// Config says where the data directory is and how to open it. Zero fields
// take the values of DefaultConfig.
type Config struct {
	// DataDir holds the database (on etcd, only backups being staged); it
	// is created (or restricted) to mode 0700.
	DataDir string
	// MasterKeyFile and MasterKey (the key's text itself) are the two ways
	// to give the master key; set at most one. With neither, a key is
	// generated into DataDir/master.key for local use.
	MasterKeyFile string
	MasterKey     string
	// PreviousMasterKeyFile and PreviousMasterKey give, during a
	// rotation, the key the database was under before (see
	// store.Store.RotateMasterKey): the broker reads what it wrapped and
	// tagged until the rotation has moved everything to MasterKey.
	PreviousMasterKeyFile string
	PreviousMasterKey     string
	// LockTimeout is how long to wait for the database lock before giving up.
	LockTimeout time.Duration
	// Storage is the engine: StorageBBolt (the default: one broker, its
	// database in DataDir) or StorageEtcd (any number of replicas sharing
	// the etcd cluster Etcd names, each with the same master key, which
	// must then be configured).
	Storage string
	Etcd    etcd.Config

	Logger *slog.Logger
}

// Storage engines (Config.Storage).
const (
	StorageBBolt = "bbolt"
	StorageEtcd  = "etcd"
)

// DefaultConfig is ./credbroker-data, bbolt, a lock timeout of a second and the
// default logger.
func DefaultConfig() Config {
	return Config{
		DataDir:     "./credbroker-data",
		LockTimeout: time.Second,
		Storage:     StorageBBolt,
		Etcd:        etcd.Config{Prefix: etcd.DefaultPrefix, LockTTL: etcd.DefaultLockTTL, HistoryRetention: etcd.DefaultHistoryRetention},
		Logger:      slog.Default(),
	}
}

// WithDefaults is cfg with the values of DefaultConfig in its unset
// (empty, zero or negative) fields.
func WithDefaults(cfg Config) Config {
	d := DefaultConfig()
	if cfg.DataDir == "" {
		cfg.DataDir = d.DataDir
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = d.LockTimeout
	}
	if cfg.Storage == "" {
		cfg.Storage = d.Storage
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	return cfg
}

// Open makes the data directory ready for the running broker and opens its
// database. It creates the directory (or restricts it) to mode 0700.
// masters are the keys ConfiguredMasters returned, or nil for the local
// key, which Open generates on first start. It checks the keys against
// the database (tagging the records of one written by an earlier
// version), compacts the file if a deletion the last run did not get to
// left sealed material in it, and types principals stored untyped by
// earlier versions (see typePrincipals). It returns the store and the
// master keys. With a wrong master key, or without the previous key while
// a rotation is unfinished, it fails, leaving the database untouched.
func Open(cfg Config, masters *keyring.Masters) (*store.Store, *keyring.Masters, error) {
	cfg = WithDefaults(cfg)
	// On etcd too: backups are staged there.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("--data-dir: cannot create the data directory: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("--data-dir: cannot make the data directory private (mode 0700): %w (a volume's root this user does not own? use a directory inside it, such as /data/credbroker)", err)
	}
	if err := unix.Access(cfg.DataDir, unix.W_OK|unix.X_OK); err != nil {
		return nil, nil, fmt.Errorf("--data-dir %s: the data directory is not writable by this user: %w", cfg.DataDir, err)
	}
	if cfg.Storage == StorageEtcd {
		st, err := openStore(cfg, masters) // CheckStorage made sure they are configured
		return st, masters, err
	}
	if masters == nil {
		master, err := localMasterKey(cfg)
		if err != nil {
			return nil, nil, err
		}
		masters = keyring.NewMasters(master)
	}
	st, err := openStore(cfg, masters)
	if err != nil {
		return nil, nil, err
	}
	if err := CompactIfPending(st); err != nil { // a deletion the last run did not get to
		st.Close()
		return nil, nil, err
	}
	if err := typePrincipals(st); err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("type the principals of grants and admin principals: %w", err)
	}
	return st, masters, nil
}

// CheckStorage checks the storage configuration; masters are the
// configured master keys, nil if none is.
func CheckStorage(cfg Config, masters *keyring.Masters) error {
	switch cfg.Storage {
	case "", StorageBBolt:
		return nil
	case StorageEtcd:
	default:
		return fmt.Errorf("--storage must be %s or %s, not %q", StorageBBolt, StorageEtcd, cfg.Storage)
	}
	switch {
	case cfg.Etcd.LockTTL%time.Second != 0 || cfg.Etcd.LockTTL < 0:
		return fmt.Errorf("--etcd-lock-ttl %s: etcd leases last whole seconds", cfg.Etcd.LockTTL)
	case len(cfg.Etcd.Endpoints) == 0:
		return errors.New("--storage etcd needs --etcd-endpoints, the client URLs of the etcd cluster's members")
	case masters == nil:
		return errors.New("--storage etcd needs the master key configured (--master-key-file or CREDBROKER_MASTER_KEY), the same on every replica: a key generated into one replica's data directory would be unknown to the others")
	}
	return nil
}

// openStore opens the database, checks the master keys against it, and
// gives the store its record keys. A new database records a check value
// for the key; an existing one is only read, unless it was written before
// records were tagged, when its records are tagged in one transaction.
func openStore(cfg Config, masters *keyring.Masters) (*store.Store, error) {
	st, err := openEngine(cfg)
	if err != nil {
		return nil, err
	}
	// Before the check: a rotation to a key this replica lacks is refused
	// from now on (on etcd).
	err = st.Announce(context.Background(), masters)
	// Replicas that start together on a new database race to identify it:
	// the one that loses checks its key against the winner's.
	for attempt := 0; err == nil; attempt++ {
		var legacy bool
		if legacy, err = checkMasterKey(st, masters); err != nil {
			err = fmt.Errorf("%w (%s%s), or its check value was changed; refusing to start and leaving the database untouched", err, where(cfg), keysNamed(st, masters))
			break
		}
		var tagged int
		tagged, err = st.Authenticate(masters, legacy, upgradeEvent())
		if tagged > 0 {
			cfg.Logger.Warn("upgraded a database written by an earlier version: its records are now tagged for integrity checks, as they were found. Anyone holding a copy of it from before (an old backup) could present that copy again, edited: rekey to a new master key to rule that out", "records", tagged)
		}
		if errors.Is(err, storage.ErrConflict) && attempt < 2 {
			err = nil // another replica identified the database first
			continue
		}
		break
	}
	if err == nil {
		err = checkRotation(cfg, st, masters)
	}
	if err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

// keysNamed says which master key the database is under and which this
// broker was given, by their ids, if the database records its key's id.
func keysNamed(st *store.Store, masters *keyring.Masters) string {
	under, err := st.KeyID()
	if err != nil || under == "" {
		return ""
	}
	var given []string
	for _, k := range masters.All() {
		given = append(given, k.ID())
	}
	return fmt.Sprintf("; the database is under master key %s, this broker was given %s", under, strings.Join(given, " and "))
}

// checkRotation refuses to start without the previous master key while a
// rotation is unfinished, or with a retired key as the master key, and
// says what to do next with the keys given.
func checkRotation(cfg Config, st *store.Store, masters *keyring.Masters) error {
	pending, err := st.PendingRotation()
	if err != nil {
		return err
	}
	retired, err := st.RetiredKeys()
	if err != nil {
		return err
	}
	configured, current := masters.All()[0], masters.Current()
	switch {
	case slices.Contains(retired, configured.ID()) && current.ID() != configured.ID():
		return fmt.Errorf("the master key given (%s) was retired by a rotation to %s (%s): give that key as --master-key-file", configured.ID(), current.ID(), where(cfg))
	case pending != nil && !masters.Holds(pending.From):
		return fmt.Errorf("a rotation of the master key from %s to %s has not finished (%s): until it has, start the broker with the old key as --previous-master-key-file (or CREDBROKER_PREVIOUS_MASTER_KEY), and finish it with credbroker rotate-master-key", pending.From, pending.To, where(cfg))
	case pending != nil:
		cfg.Logger.Warn("a rotation of the master key has not finished: run credbroker rotate-master-key to finish it", "from", pending.From, "to", pending.To)
	case current.ID() != configured.ID():
		cfg.Logger.Warn("the database is under the previous master key: once every replica holds the new one, run credbroker rotate-master-key to move it", "current", current.ID(), "new", configured.ID())
	case len(masters.All()) > 1:
		cfg.Logger.Info("the database is under the master key; the previous one is no longer needed and can be left out", "master_key", configured.ID())
	}
	return nil
}

// openEngine opens the configured storage engine.
func openEngine(cfg Config) (*store.Store, error) {
	if cfg.Storage != StorageEtcd {
		st, err := store.Open(filepath.Join(cfg.DataDir, dbFileName), cfg.LockTimeout)
		if err != nil {
			return nil, fmt.Errorf("--data-dir %s: %w", cfg.DataDir, err)
		}
		return st, nil
	}
	db, err := etcd.Open(cfg.Etcd, store.Logs...)
	if err != nil {
		return nil, err
	}
	loading, err := db.Loading(context.Background())
	if err == nil && loading {
		err = fmt.Errorf("a restore into %s has not finished: run credbroker restore again, which finishes it, before starting the broker", where(cfg))
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return store.New(db)
}

// where names the database in messages.
func where(cfg Config) string {
	if cfg.Storage == StorageEtcd {
		return fmt.Sprintf("etcd %s, prefix %q", strings.Join(cfg.Etcd.Endpoints, ","), cmp.Or(cfg.Etcd.Prefix, etcd.DefaultPrefix))
	}
	return "data directory " + cfg.DataDir
}

// checkMasterKey checks the master keys against the store's key check
// value: the one bound to its database id, which one of them must have
// made, or, in a database without an id, one of an earlier version made
// by the current key, which makes it legacy (see store.Authenticate). A
// new database has neither. It returns keyring.ErrWrongMasterKey
// otherwise.
func checkMasterKey(st *store.Store, masters *keyring.Masters) (legacy bool, err error) {
	// The id first, then the check value, then the id again if there was
	// none: a replica that identifies the database meanwhile writes both
	// at once, and this one must judge them together.
	id, err := st.DatabaseID()
	if err != nil {
		return false, err
	}
	check, err := st.KeyCheck()
	if err == nil && id == nil && check != nil {
		id, err = st.DatabaseID()
	}
	switch {
	case err != nil:
		return false, err
	case id != nil:
		if masters.Verifying(check, id) == nil {
			return false, keyring.ErrWrongMasterKey
		}
		return false, nil
	case check != nil:
		return true, masters.Current().VerifyLegacyKeyCheck(check)
	}
	return false, nil
}
