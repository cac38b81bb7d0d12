package server

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
// cfg.DataDir. It first checks the backup against its checksum file, if
// there is one, every page of it, that the configured master key opens
// it, and every record's integrity tag. The database already there, if any, is
// kept beside it under a new name. At every moment the data directory holds
// either the old database or the backup, whole. The broker must be stopped.
func Restore(cfg Config, backupPath string) (RestoreResult, error) {
	cfg.setDefaults()
	var res RestoreResult
	var err error
	if res.Checksummed, err = matchesChecksumFile(backupPath); err != nil {
		return RestoreResult{}, err
	}
	check, err := store.CheckBackup(backupPath)
	if err != nil {
		return RestoreResult{}, err
	}
	if cfg.MasterKeyFile == "" && cfg.MasterKey == "" {
		if _, err := os.Stat(filepath.Join(cfg.DataDir, masterKeyFileName)); err != nil {
			return RestoreResult{}, errors.New("restore needs the master key the backup was made under: pass --master-key-file or CREDBROKER_MASTER_KEY")
		}
	}
	master, err := loadMasterKey(cfg)
	if err != nil {
		return RestoreResult{}, err
	}
	if master.VerifyKeyCheck(check) != nil {
		return RestoreResult{}, errors.New("the master key given does not open this backup, which was made under another one; nothing was changed")
	}
	if res.Untagged, err = store.CheckRecords(backupPath, recordKeys(master)); err != nil {
		return RestoreResult{}, fmt.Errorf("refusing to restore %s (nothing was changed): %w", backupPath, err)
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return RestoreResult{}, err
	}

	path := filepath.Join(cfg.DataDir, dbFileName)
	if _, err := os.Stat(path); err == nil {
		// Holding the lock proves no broker runs on the directory.
		st, err := openStopped(cfg, "restoring")
		if err != nil {
			return RestoreResult{}, err
		}
		defer st.Close()
		// A second name for the same file: the old database stays whole
		// until the rename below replaces its first name.
		if res.Previous, err = linkAside(path, path+".before-restore-"+time.Now().UTC().Format("20060102T150405Z")); err != nil {
			return RestoreResult{}, fmt.Errorf("keep the current database: %w", err)
		}
	}
	staged := path + ".restoring"
	if err := copyFileSynced(backupPath, staged); err != nil {
		os.Remove(staged)
		return RestoreResult{}, err
	}
	if err := os.Rename(staged, path); err != nil {
		os.Remove(staged)
		return RestoreResult{}, err
	}
	return res, syncDir(cfg.DataDir)
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

// copyFileSynced copies src to a new file dst (mode 0600) and fsyncs it.
func copyFileSynced(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Sync(), out.Close())
}

// CheckBackup checks that the file at path is a whole, undamaged
// credbroker database, as Restore does before putting it in place.
func CheckBackup(path string) error {
	_, err := store.CheckBackup(path)
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
// beside it, and fails if the backup does not match it.
func matchesChecksumFile(backupPath string) (bool, error) {
	line, err := os.ReadFile(backupPath + ChecksumSuffix)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	want, _, _ := strings.Cut(strings.TrimSpace(string(line)), " ")
	f, err := os.Open(backupPath)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return false, err
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != want {
		return false, fmt.Errorf("%s is damaged: its SHA-256 is %s, but %s%s says %s; nothing was changed", backupPath, got, backupPath, ChecksumSuffix, want)
	}
	return true, nil
}
