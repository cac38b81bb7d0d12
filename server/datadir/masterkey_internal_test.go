package datadir

import (
	"os"
	"path/filepath"
	"testing"
)

// A master key file others may read is warned about; one only its owner,
// or its owner and this process's own group (a Kubernetes Secret under the
// pod's fsGroup) may read is not.
func TestReadableByOthers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	if err := os.WriteFile(path, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	check := func(mode os.FileMode, gid int, want bool) {
		t.Helper()
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		if gid >= 0 {
			if err := os.Chown(path, -1, gid); err != nil {
				t.Fatal(err)
			}
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := readableByOthers(fi); got != want {
			t.Errorf("mode %v, group %d: readable by others %v, want %v", mode, gid, got, want)
		}
	}
	check(0o600, -1, false)
	check(0o644, -1, true)
	check(0o604, -1, true)
	check(0o640, os.Getgid(), false)
	if os.Geteuid() == 0 { // only root gives a file to another group
		check(0o640, 54321, true)
	}
}
