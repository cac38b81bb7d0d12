package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const e2eNewMasterKey = "c2Vjb25kLWtleS1mb3ItcmVrZXktdGVzdHMtMzItYnk="

// TestRekeyKilledMidway kills `credbroker rekey` at many points of its run,
// each time on a fresh copy of the same database. Every time, running it
// again completes the job, and the broker then starts with the new key
// only and serves every account's cached token.
func TestRekeyKilledMidway(t *testing.T) {
	e := newE2ESetup(t, "--rate-limit", "-1")
	bin, dataDir := e.bin, e.dataDir
	first := startBinary(t, bin, &e.logs, e.args...)
	adminConn := first.connect(t, keyCreds(first.bootstrapKey)...)
	checkerKey := createCheckerKey(t, adminConn)
	const accounts = 200
	linkAccounts(t, credbrokerv1.NewAccountServiceClient(adminConn), accounts)
	first.stop(t)
	pristine, err := os.ReadFile(filepath.Join(dataDir, "credbroker.db"))
	if err != nil {
		t.Fatal(err)
	}

	rekey := func(dir string) *exec.Cmd {
		cmd := exec.Command(bin, "rekey", "--data-dir", dir)
		cmd.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey, "CREDBROKER_NEW_MASTER_KEY="+e2eNewMasterKey)
		return cmd
	}
	interrupted := 0
	var dir string
	for i := range 25 {
		dir = filepath.Join(t.TempDir(), fmt.Sprint("copy", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "credbroker.db"), pristine, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := rekey(dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		at := time.Duration(i) * 500 * time.Microsecond
		time.Sleep(at)
		_ = cmd.Process.Kill()
		var exit *exec.ExitError
		if err := cmd.Wait(); errors.As(err, &exit) && !exit.Exited() {
			interrupted++
		}
		out, err := rekey(dir).CombinedOutput()
		if err != nil {
			t.Fatalf("re-run after a kill at %v: %v\n%s", at, err, out)
		}
		if !strings.Contains(string(out), "is under the new master key: this run moved") && !strings.Contains(string(out), "already under the new master key") {
			t.Fatalf("re-run after a kill at %v said: %s", at, out)
		}
		if strings.Contains(string(out), e2eNewMasterKey) || strings.Contains(string(out), e2eMasterKey) {
			t.Fatal("rekey printed a master key")
		}
	}
	if interrupted == 0 {
		t.Fatal("no rekey was killed before it finished; the test proved nothing")
	}
	t.Logf("%d of 25 rekeys killed before they finished; every re-run completed", interrupted)

	// The last copy: the old key is refused, the new key serves every
	// account's token from the cache it had (its data key opens).
	// The last --data-dir wins. Were serve to start, it would not exit: bound it.
	args := append(slices.Clone(e.args), "--data-dir", dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old := exec.CommandContext(ctx, bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0"}, args...)...)
	old.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey)
	if out, err := old.CombinedOutput(); err == nil || !strings.Contains(string(out), "master key") {
		t.Fatalf("serve with the old key after rekey: %v\n%s", err, out)
	}
	second := startBinaryWithKey(t, bin, e2eNewMasterKey, &e.logs, args...)
	tokens := credbrokerv1.NewTokenServiceClient(second.connect(t, keyCreds(checkerKey)...))
	requests := e.fake.Requests()
	for i := range accounts {
		if _, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: fmt.Sprintf("accounts/acct-%d", i)}); err != nil {
			t.Fatalf("token of acct-%d after rekey: %v", i, err)
		}
	}
	if e.fake.Requests() != requests {
		t.Fatalf("%d cached tokens could not be opened after rekey", e.fake.Requests()-requests)
	}
	second.stop(t)
}

// linkAccounts links acct-0 ... acct-(n-1), each granted to callerKeys/checker.
func linkAccounts(t *testing.T, accounts credbrokerv1.AccountServiceClient, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 4 {
				name := fmt.Sprintf("acct-%d", i)
				_, err := accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
					AccountId: name,
					Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
						ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
					}},
				})
				if err == nil {
					_, err = accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/" + name, Principal: "callerKeys/checker"})
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// credbroker rotate-master-key moves a running broker's database (here on
// bbolt) to the master key it was restarted with, beside the previous
// one; afterwards the broker starts with the new key alone and serves the
// tokens it had, with no new token request. A second run has nothing to
// do. Neither prints a key.
func TestRotateMasterKeyCommand(t *testing.T) {
	e := newE2ESetup(t)
	first := startBinary(t, e.bin, &e.logs, e.args...)
	admin := first.bootstrapKey
	adminConn := first.connect(t, keyCreds(admin)...)
	checkerKey := createCheckerKey(t, adminConn)
	const accounts = 3
	linkAccounts(t, credbrokerv1.NewAccountServiceClient(adminConn), accounts)
	first.stop(t)

	oldKeyFile := filepath.Join(t.TempDir(), "old.key")
	if err := os.WriteFile(oldKeyFile, []byte(e2eMasterKey), 0o600); err != nil {
		t.Fatal(err)
	}
	both := startBinaryWithKey(t, e.bin, e2eNewMasterKey, &e.logs, append(slices.Clone(e.args), "--previous-master-key-file", oldKeyFile)...)
	before := map[string]string{}
	tokens := credbrokerv1.NewTokenServiceClient(both.connect(t, keyCreds(checkerKey)...))
	for i := range accounts {
		name := fmt.Sprintf("accounts/acct-%d", i)
		resp, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		before[name] = resp.GetAccessToken()
	}
	requests := e.fake.Requests()
	rotate := func() string {
		cmd := exec.Command(e.bin, "rotate-master-key", "--broker", both.addr)
		cmd.Env = append(os.Environ(), "CREDBROKER_CALLER_KEY="+admin)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("rotate-master-key: %v\n%s", err, out)
		}
		for _, secret := range []string{e2eMasterKey, e2eNewMasterKey, admin, e2eClientSecret} {
			if strings.Contains(string(out), secret) {
				t.Fatalf("rotate-master-key printed a secret: %s", out)
			}
		}
		return string(out)
	}
	if out := rotate(); !strings.Contains(out, fmt.Sprintf("this run gave %d accounts fresh data keys", accounts)) {
		t.Fatalf("rotate-master-key said: %s", out)
	}
	if out := rotate(); !strings.Contains(out, "already under master key") {
		t.Fatalf("a second rotate-master-key said: %s", out)
	}
	both.stop(t)

	only := startBinaryWithKey(t, e.bin, e2eNewMasterKey, &e.logs, e.args...)
	tokens = credbrokerv1.NewTokenServiceClient(only.connect(t, keyCreds(checkerKey)...))
	for name, tok := range before {
		resp, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: name})
		if err != nil || resp.GetAccessToken() != tok {
			t.Fatalf("%s after the rotation: %v (same token: %v)", name, err, resp.GetAccessToken() == tok)
		}
	}
	if e.fake.Requests() != requests {
		t.Fatalf("%d new token requests after the rotation", e.fake.Requests()-requests)
	}
	only.stop(t)
}
