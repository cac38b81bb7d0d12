package datadir

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/storage/etcd"
	"github.com/credbroker/credbroker/server/internal/store"
)

// RestoreResult says what Restore did.
type RestoreResult struct {
	// Previous is where the database that was in place before now is; empty
	// if there was none.
	Previous string
	// Checksummed: the backup matched the SHA-256 in its .sha256 file.
	Checksummed bool
	// Untagged: the backup was made by a version that did not tag records,
	// so they could not be checked; the broker tags them on its next start.
	Untagged bool
}

// ChecksumSuffix names the file beside a backup that holds its SHA-256, in
// the format of sha256sum.
const ChecksumSuffix = ".sha256"

// Restore puts the backup at backupPath in place as the database of
// cfg.DataDir. It reads the backup once, into a staging file in the data
// directory, and checks that copy: against the backup's checksum file, if
// there is one, every page of it, that the configured master key opens it,
// and every record's integrity tag. Only that checked copy is put in
// place, so a backup that changes meanwhile cannot slip past the checks.
// The database already there, if any, is kept beside it under a new name.
// At every moment the data directory holds either the old database or the
// backup, whole. The broker must be stopped.
//
// A backup made by a version that did not tag records carries nothing
// that shows whether a record was changed: it is restored only with
// allowUntagged, the operator's word that it is trusted, and tagged when
// the broker next starts.
func Restore(cfg Config, backupPath string, allowUntagged bool) (RestoreResult, error) {
	cfg = WithDefaults(cfg)
	if cfg.Storage == StorageEtcd {
		return restoreIntoEtcd(cfg, backupPath, allowUntagged)
	}
	if cfg.MasterKeyFile == "" && cfg.MasterKey == "" {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, masterKeyFileName)); err != nil {
			return RestoreResult{}, errors.New("restore needs the master key the backup was made under: pass --master-key-file or CREDBROKER_MASTER_KEY")
		}
	}
	masters, err := ConfiguredMasters(cfg)
	if err == nil && masters == nil {
		var local *keyring.MasterKey
		local, err = localMasterKey(cfg)
		masters = keyring.NewMasters(local)
	}
	if err != nil {
		return RestoreResult{}, err
	}
	_, statErr := os.Stat(cfg.DataDir)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return RestoreResult{}, err
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return RestoreResult{}, fmt.Errorf("restrict data directory: %w", err)
	}
	path := filepath.Join(cfg.DataDir, dbFileName)
	staged := path + ".restoring"
	res, err := stageBackup(backupPath, staged, masters, allowUntagged)
	if err == nil {
		res.Previous, err = replaceDatabase(cfg, staged, path)
	}
	if err != nil {
		os.Remove(staged)
		if errors.Is(statErr, fs.ErrNotExist) {
			os.Remove(cfg.DataDir) // the directory Restore made, still empty
		}
		return RestoreResult{}, err
	}
	return res, nil
}

// restoreIntoEtcd loads the backup at backupPath, checked as Restore
// checks it, into the etcd prefix cfg.Etcd names, which must hold no
// broker yet (a new prefix): a backup of bbolt or of etcd alike, so that a
// broker moves between engines with it. No broker may start on the prefix
// until the load has finished; one interrupted is finished by running
// this again (see etcd.DB.Load).
func restoreIntoEtcd(cfg Config, backupPath string, allowUntagged bool) (RestoreResult, error) {
	masters, err := ConfiguredMasters(cfg)
	if err == nil {
		err = CheckStorage(cfg, masters)
	}
	if err != nil {
		return RestoreResult{}, err
	}
	dir, err := os.MkdirTemp("", "credbroker-restore-")
	if err != nil {
		return RestoreResult{}, err
	}
	defer os.RemoveAll(dir)
	staged := filepath.Join(dir, dbFileName)
	res, err := stageBackup(backupPath, staged, masters, allowUntagged)
	if err != nil {
		return RestoreResult{}, err
	}
	if res.Untagged {
		// Only a broker on bbolt tags an earlier version's records.
		return RestoreResult{}, fmt.Errorf("%s was made by an earlier version whose records carry no integrity tags; restore it into bbolt (--data-dir, --allow-untagged), start the broker there once so that it tags them, back that up, and restore the new backup into etcd (nothing was changed)", backupPath)
	}
	db, err := etcd.Open(cfg.Etcd, store.Logs...)
	if err != nil {
		return RestoreResult{}, err
	}
	defer db.Close()
	if err := store.LoadBackup(staged, db.Load); err != nil {
		if errors.Is(err, etcd.ErrNotEmpty) {
			err = fmt.Errorf("%w: restore into a new prefix (--etcd-prefix) and point the replicas at it, or remove the old broker's keys first; nothing was changed", err)
		}
		return RestoreResult{}, err
	}
	return res, nil
}

// stageBackup copies the backup into the new file staged and checks the
// copy: its SHA-256 against the backup's checksum file, if there is one,
// every database page, that master opens it, and every record's tag.
func stageBackup(backupPath, staged string, masters *keyring.Masters, allowUntagged bool) (RestoreResult, error) {
	digest, err := copyToNewFile(backupPath, staged)
	if err != nil {
		return RestoreResult{}, err
	}
	var res RestoreResult
	if res.Checksummed, err = matchesChecksumFile(backupPath, digest); err != nil {
		return RestoreResult{}, err
	}
	check, id, err := store.CheckBackup(staged)
	if err != nil {
		return RestoreResult{}, fmt.Errorf("%s (as copied to %s): %w; nothing was changed", backupPath, staged, err)
	}
	wrongKey := errors.New("the master key given does not open this backup, which was made under another one or changed since; nothing was changed")
	if id == nil {
		if masters.Current().VerifyLegacyKeyCheck(check) != nil {
			return RestoreResult{}, wrongKey
		}
		if !allowUntagged {
			return RestoreResult{}, fmt.Errorf("%s was made by an earlier version: its records carry no integrity tags, so nothing shows whether they were changed since; if you trust this file, restore it with --allow-untagged (nothing was changed)", backupPath)
		}
		res.Untagged = true
		return res, nil
	}
	if masters.Verifying(check, id) == nil {
		return RestoreResult{}, wrongKey
	}
	if err := store.CheckRecords(staged, masters); err != nil {
		return RestoreResult{}, fmt.Errorf("refusing to restore %s (nothing was changed): %w", backupPath, err)
	}
	return res, nil
}

// replaceDatabase renames staged to path, keeping the database at path, if
// any, under a new name, which it returns.
func replaceDatabase(cfg Config, staged, path string) (previous string, err error) {
	if _, err := os.Stat(path); err == nil {
		// Holding the lock proves no broker runs on the directory.
		st, err := openStopped(cfg, "restoring")
		if err != nil {
			return "", err
		}
		defer st.Close()
		// A second name for the same file: the old database stays whole
		// until the rename below replaces its first name.
		if previous, err = linkAside(path, path+".before-restore-"+time.Now().UTC().Format("20060102T150405Z")); err != nil {
			return "", fmt.Errorf("keep the current database: %w", err)
		}
		// The audit events its broker journaled last go with it: they
		// belong to that database, and are indexed if it is put back.
		if err := os.Rename(filepath.Join(cfg.DataDir, AuditJournalDir), previous+"."+AuditJournalDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("keep the current database's audit journal: %w", err)
		}
	}
	if err := os.Rename(staged, path); err != nil {
		return "", err
	}
	return previous, syncDir(cfg.DataDir)
}

// linkAside gives the file at path the new name base, or base-2, base-3,
// ... if that is taken, and returns the name.
func linkAside(path, base string) (string, error) {
	name := base
	for i := 2; ; i++ {
		err := os.Link(path, name)
		if !errors.Is(err, fs.ErrExist) {
			return name, err
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// copyToNewFile copies src into a new file dst (mode 0600), fsyncs it, and
// returns the SHA-256 of what it copied. It first removes whatever an
// interrupted restore left at dst (a symlink itself, not its target); O_EXCL
// then refuses any file, symlink included, planted there meanwhile, so the
// copy cannot be redirected out of the directory.
func copyToNewFile(src, dst string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := os.Remove(dst); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	sum := sha256.New()
	_, err = io.Copy(io.MultiWriter(out, sum), in)
	return hex.EncodeToString(sum.Sum(nil)), errors.Join(err, out.Sync(), out.Close())
}

// CheckBackup checks that the file at path is a whole, undamaged
// credbroker database, as Restore does before putting it in place.
func CheckBackup(path string) error {
	_, _, err := store.CheckBackup(path)
	return err
}

// SaveBackup gives a received snapshot, the file at tmpPath whose SHA-256
// is digest, the name out once it checks out, and writes the checksum file
// that Restore reads beside it. It never replaces an existing file.
func SaveBackup(tmpPath, out, digest string) error {
	if err := CheckBackup(tmpPath); err != nil {
		return err
	}
	if err := os.Link(tmpPath, out); err != nil {
		return err
	}
	if err := writeNewFile(out+ChecksumSuffix, digest+"  "+filepath.Base(out)+"\n"); err != nil {
		return err
	}
	return syncDir(filepath.Dir(out))
}

// writeNewFile writes text to a new file (mode 0600) and fsyncs it; it
// fails if the file exists.
func writeNewFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	return errors.Join(err, f.Sync(), f.Close())
}

// matchesChecksumFile reports whether the backup has a checksum file
// beside it, and fails if digest, the SHA-256 of the copy read from the
// backup, does not match it.
func matchesChecksumFile(backupPath, digest string) (bool, error) {
	line, err := os.ReadFile(backupPath + ChecksumSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	want, _, _ := strings.Cut(strings.TrimSpace(string(line)), " ")
	if digest != want {
		return false, fmt.Errorf("%s is damaged: its SHA-256 is %s, but %s%s says %s; nothing was changed", backupPath, digest, backupPath, ChecksumSuffix, want)
	}
	return true, nil
}
