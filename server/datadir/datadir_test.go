package datadir_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/server/datadir"
)

const (
	masterKey = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA="
	otherKey  = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
)

// newConfig is a data directory that does not exist yet, under masterKey.
func newConfig(t *testing.T) datadir.Config {
	t.Helper()
	return datadir.Config{
		DataDir:   filepath.Join(t.TempDir(), "data"),
		MasterKey: masterKey,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// snapshot opens a new data directory as the broker does and writes a
// backup of its database into a file of its own; it returns the file and
// its SHA-256.
func snapshot(t *testing.T) (string, string) {
	t.Helper()
	cfg := newConfig(t)
	master, err := datadir.ConfiguredMasters(cfg)
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := datadir.Open(cfg, master)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	path := filepath.Join(t.TempDir(), "snapshot")
	if _, err := st.CompactTo(path); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		t.Fatalf("snapshot of %d bytes: %v", len(data), err)
	}
	sum := sha256.Sum256(data)
	return path, hex.EncodeToString(sum[:])
}

// SaveBackup names a snapshot that checks out and writes its checksum file
// beside it, which Restore then verifies. It never replaces a file, and a
// damaged snapshot gets no name.
func TestSaveBackup(t *testing.T) {
	t.Parallel()
	snap, digest := snapshot(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "broker.backup")
	if err := datadir.SaveBackup(snap, out, digest); err != nil {
		t.Fatal(err)
	}
	if line, err := os.ReadFile(out + datadir.ChecksumSuffix); err != nil || string(line) != digest+"  broker.backup\n" {
		t.Fatalf("checksum file %q, %v", line, err)
	}
	if err := datadir.SaveBackup(snap, out, digest); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("SaveBackup over an existing backup: %v", err)
	}

	data, err := os.ReadFile(snap)
	if err != nil {
		t.Fatal(err)
	}
	cut := filepath.Join(t.TempDir(), "cut")
	if err := os.WriteFile(cut, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	cutOut := filepath.Join(dir, "cut.backup")
	if err := datadir.SaveBackup(cut, cutOut, digest); err == nil {
		t.Fatal("SaveBackup named a cut-off snapshot")
	}
	if _, err := os.Lstat(cutOut); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the cut-off snapshot got its name: %v", err)
	}

	res, err := datadir.Restore(newConfig(t), out, false)
	if err != nil || !res.Checksummed || res.Previous != "" {
		t.Fatalf("Restore of the saved backup: %+v, %v", res, err)
	}
}

// A restore that is refused (no master key, or the wrong one) into a data
// directory that did not exist leaves none behind.
func TestRefusedRestoreLeavesNoDataDirectory(t *testing.T) {
	t.Parallel()
	backup, _ := snapshot(t)
	for name, c := range map[string]struct{ key, want string }{
		"no master key":    {"", "needs the master key"},
		"wrong master key": {otherKey, "does not open this backup"},
	} {
		cfg := newConfig(t)
		cfg.MasterKey = c.key
		if _, err := datadir.Restore(cfg, backup, false); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Restore: %v, want an error saying %q", name, err, c.want)
		}
		if _, err := os.Lstat(cfg.DataDir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: the refused restore left the data directory: %v", name, err)
		}
	}
}
