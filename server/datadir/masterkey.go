package datadir

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/credbroker/credbroker/server/internal/keyring"
)

// loadMasterKey reads the configured master key or, with none configured,
// the generated local one, generating it on first start.
func loadMasterKey(cfg Config) (*keyring.MasterKey, error) {
	if k, err := ConfiguredMasterKey(cfg); k != nil || err != nil {
		return k, err
	}
	return localMasterKey(cfg)
}

// ConfiguredMasterKey reads the master key given by --master-key-file or
// CREDBROKER_MASTER_KEY; it is nil if neither is set.
func ConfiguredMasterKey(cfg Config) (*keyring.MasterKey, error) {
	switch {
	case cfg.MasterKeyFile != "" && cfg.MasterKey != "":
		return nil, errors.New("set either --master-key-file or CREDBROKER_MASTER_KEY, not both")
	case cfg.MasterKey != "":
		k, err := keyring.ParseMasterKey(cfg.MasterKey)
		if err != nil {
			return nil, fmt.Errorf("CREDBROKER_MASTER_KEY: %w", err)
		}
		return k, nil
	case cfg.MasterKeyFile != "":
		return readMasterKeyFile("--master-key-file", cfg.MasterKeyFile, cfg.Logger)
	}
	return nil, nil
}

// ConfiguredMasters are the configured master key and, during a rotation,
// the previous one (--previous-master-key-file or
// CREDBROKER_PREVIOUS_MASTER_KEY); nil if no master key is configured.
func ConfiguredMasters(cfg Config) (*keyring.Masters, error) {
	master, err := ConfiguredMasterKey(cfg)
	if err != nil {
		return nil, err
	}
	var previous *keyring.MasterKey
	switch {
	case cfg.PreviousMasterKeyFile != "" && cfg.PreviousMasterKey != "":
		return nil, errors.New("set either --previous-master-key-file or CREDBROKER_PREVIOUS_MASTER_KEY, not both")
	case cfg.PreviousMasterKey != "":
		if previous, err = keyring.ParseMasterKey(cfg.PreviousMasterKey); err != nil {
			return nil, fmt.Errorf("CREDBROKER_PREVIOUS_MASTER_KEY: %w", err)
		}
	case cfg.PreviousMasterKeyFile != "":
		if previous, err = readMasterKeyFile("--previous-master-key-file", cfg.PreviousMasterKeyFile, cfg.Logger); err != nil {
			return nil, err
		}
	}
	switch {
	case previous == nil && master == nil:
		return nil, nil
	case previous == nil:
		return keyring.NewMasters(master), nil
	case master == nil:
		return nil, errors.New("a previous master key is given but no master key: a rotation needs the new key as --master-key-file (or CREDBROKER_MASTER_KEY) and the old one as the previous key")
	case master.ID() == previous.ID():
		return nil, errors.New("the previous master key is the master key itself: give the new key as the master key and the old one as the previous key")
	}
	return keyring.NewMasters(master, previous), nil
}

// localMasterKey reads the key generated into the data directory,
// generating it on first start.
func localMasterKey(cfg Config) (*keyring.MasterKey, error) {
	path := filepath.Join(cfg.DataDir, masterKeyFileName)
	_, statErr := os.Stat(path)
	if statErr == nil {
		cfg.Logger.Warn("USING A LOCAL MASTER KEY stored beside the data: for local use only. In production, keep the key elsewhere and pass --master-key-file or CREDBROKER_MASTER_KEY", "key_file", path)
		return readMasterKeyFile("the generated master key file", path, cfg.Logger)
	}
	if !errors.Is(statErr, fs.ErrNotExist) {
		return nil, statErr
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, dbFileName)); err == nil {
		return nil, fmt.Errorf("%s holds a database but no master key is configured and %s is missing: pass the key it was created with (--master-key-file or CREDBROKER_MASTER_KEY)", cfg.DataDir, path)
	}
	text, err := keyring.GenerateMasterKey()
	if err != nil {
		return nil, err
	}
	if err := writeNewFile(path, text+"\n"); err != nil {
		return nil, fmt.Errorf("write generated master key: %w", err)
	}
	if err := syncDir(cfg.DataDir); err != nil {
		return nil, err
	}
	cfg.Logger.Warn("GENERATED A LOCAL MASTER KEY beside the data: for local use only. In production, keep the key elsewhere and pass --master-key-file or CREDBROKER_MASTER_KEY", "key_file", path)
	return keyring.ParseMasterKey(text)
}

// syncDir makes a new file's directory entry durable, so that a crash
// cannot leave a database whose generated key file is gone.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// readableByOthers says whether users other than this process's own user
// and groups may read fi: a file its group may read is fine if the group
// is this process's (a Kubernetes Secret under the pod's fsGroup).
func readableByOthers(fi os.FileInfo) bool {
	perm := fi.Mode().Perm()
	if perm&0o007 != 0 {
		return true
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if perm&0o070 == 0 || !ok {
		return perm&0o070 != 0
	}
	groups, _ := os.Getgroups()
	return int(st.Gid) != os.Getgid() && !slices.Contains(groups, int(st.Gid))
}

// readMasterKeyFile reads the master key in path, which what (a flag)
// names in errors.
func readMasterKeyFile(what, path string, log *slog.Logger) (*keyring.MasterKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s %s: no such master key file", what, path)
	} else if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if fi, err := os.Stat(path); err == nil && readableByOthers(fi) {
		log.Warn("master key file is readable by other users; chmod 600 it", "key_file", path, "mode", fi.Mode().Perm().String())
	}
	k, err := keyring.ParseMasterKey(strings.TrimSpace(string(data)))
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", what, path, err)
	}
	return k, nil
}
