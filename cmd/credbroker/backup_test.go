package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// TestBackupAndRestore backs up a broker while it serves, restores the
// backup into a fresh data directory, and gets every account's token from
// a broker started there, from the restored cache.
func TestBackupAndRestore(t *testing.T) {
	e := newE2ESetup(t, "--rate-limit", "-1")
	first := startBinary(t, e.bin, &e.logs, e.args...)
	adminConn := first.connect(t, keyCreds(first.bootstrapKey)...)
	checkerKey := createCheckerKey(t, adminConn)
	const accounts = 20
	linkAccounts(t, credbrokerv1.NewAccountServiceClient(adminConn), accounts)
	tokens := credbrokerv1.NewTokenServiceClient(first.connect(t, keyCreds(checkerKey)...))

	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(e.bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	dir := t.TempDir()
	backupFile := filepath.Join(dir, "broker.backup")
	admin := []string{"CREDBROKER_CALLER_KEY=" + first.bootstrapKey}

	// The broker serves throughout the backup.
	var served, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: fmt.Sprintf("accounts/acct-%d", i%accounts)}); err != nil {
				failed.Add(1)
			}
			served.Add(1)
		}
	}()
	out, err := run(admin, "backup", "--broker", first.addr, "--out", backupFile)
	close(stop)
	wg.Wait()
	if err != nil || !strings.Contains(out, "wrote "+backupFile) {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if failed.Load() != 0 || served.Load() == 0 {
		t.Fatalf("during the backup %d of %d GetToken calls failed", failed.Load(), served.Load())
	}
	if strings.Contains(out, first.bootstrapKey) {
		t.Fatal("backup printed the caller key")
	}
	if sum, err := os.ReadFile(backupFile + ".sha256"); err != nil || !strings.HasSuffix(string(sum), "  broker.backup\n") {
		t.Fatalf("checksum file: %q, %v", sum, err)
	}

	// Refusals of backup.
	for name, c := range map[string]struct {
		env  []string
		args []string
		want string
	}{
		"existing file": {admin, []string{"--out", backupFile}, "exists already"},
		"no identity":   {nil, []string{"--out", filepath.Join(dir, "x")}, "no identity"},
		"not an admin":  {[]string{"CREDBROKER_CALLER_KEY=" + checkerKey}, []string{"--out", filepath.Join(dir, "y")}, "needs an admin caller key or admin principal"},
	} {
		out, err := run(c.env, append([]string{"backup", "--broker", first.addr}, c.args...)...)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("backup with %s: %v\n%s", name, err, out)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".credbroker-backup-*")); len(leftovers) != 0 {
		t.Errorf("refused backups left files: %v", leftovers)
	}

	// Refusals of restore; none of them writes anything.
	fresh := filepath.Join(t.TempDir(), "restored")
	damaged := filepath.Join(dir, "damaged.backup")
	data, err := os.ReadFile(backupFile)
	if err != nil {
		t.Fatal(err)
	}
	data[len(data)/2] ^= 0xff
	sum, _ := os.ReadFile(backupFile + ".sha256")
	if os.WriteFile(damaged, data, 0o600) != nil || os.WriteFile(damaged+".sha256", sum, 0o600) != nil {
		t.Fatal("could not write the damaged copy")
	}
	key := func(k string) []string { return []string{"CREDBROKER_MASTER_KEY=" + k} }
	for name, c := range map[string]struct {
		env       []string
		in, into  string
		want      string
		untouched string
	}{
		"another master key": {key(e2eNewMasterKey), backupFile, fresh, "another one", fresh},
		"no master key":      {nil, backupFile, fresh, "needs the master key", fresh},
		"damaged backup":     {key(e2eMasterKey), damaged, fresh, "is damaged", fresh},
		"running broker":     {key(e2eMasterKey), backupFile, e.dataDir, "stop the broker", ""},
	} {
		out, err := run(c.env, "restore", "--in", c.in, "--data-dir", c.into)
		if err == nil || !strings.Contains(out, c.want) {
			t.Errorf("restore with %s: %v\n%s", name, err, out)
		}
		if _, err := os.Stat(filepath.Join(c.untouched, "credbroker.db")); c.untouched != "" && err == nil {
			t.Errorf("restore with %s wrote a database", name)
		}
	}
	if _, err := os.Stat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("refused restores left the data directory they made: %v", err)
	}

	// Changes after the backup are not in it.
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/acct-0"}); err != nil {
		t.Fatal(err)
	}
	first.stop(t)

	out, err = run(key(e2eMasterKey), "restore", "--in", backupFile, "--data-dir", fresh)
	if err != nil || !strings.Contains(out, "restored") || strings.Contains(out, "only the database's structure") {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	second := startBinary(t, e.bin, &e.logs, append(slices.Clone(e.args), "--data-dir", fresh)...)
	tokens = credbrokerv1.NewTokenServiceClient(second.connect(t, keyCreds(checkerKey)...))
	requests := e.fake.Requests()
	for i := range accounts {
		if _, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: fmt.Sprintf("accounts/acct-%d", i)}); err != nil {
			t.Fatalf("token of acct-%d from the restored broker: %v", i, err)
		}
	}
	if n := e.fake.Requests() - requests; n != 0 {
		t.Fatalf("the restored broker asked JumpCloud %d times; its cached tokens were not restored", n)
	}
	second.stop(t)

	// Restoring over a database keeps it, twice within a second too. A
	// symlink planted at the staging path is not followed, and the data
	// directory gets its mode 0700 back.
	outside := filepath.Join(dir, "outside")
	if err := os.WriteFile(outside, []byte("not the broker's"), 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Symlink(outside, filepath.Join(fresh, "credbroker.db.restoring")) != nil || os.Chmod(fresh, 0o755) != nil {
		t.Fatal("could not plant the symlink")
	}
	for i := 1; i <= 2; i++ {
		out, err = run(key(e2eMasterKey), "restore", "--in", backupFile, "--data-dir", fresh)
		kept, _ := filepath.Glob(filepath.Join(fresh, "credbroker.db.before-restore-*"))
		if err != nil || len(kept) != i || !strings.Contains(out, kept[i-1]) {
			t.Fatalf("restore %d over a database: %v, kept %v\n%s", i, err, kept, out)
		}
	}
	if got, _ := os.ReadFile(outside); string(got) != "not the broker's" {
		t.Errorf("restore wrote %d bytes through the symlink at the staging path", len(got))
	}
	if fi, err := os.Stat(fresh); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm() != 0o700 {
		t.Errorf("data directory mode after restore: %v", fi.Mode().Perm())
	}
}
