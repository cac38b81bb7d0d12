package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// --bootstrap-admin-key-file makes the operator's key the first admin's,
// and nothing is printed (a service manager would log it); a later start
// says why no key is shown and how admins make more; a key not shaped as
// the broker's is refused, naming the flag.
func TestBootstrapAdminKeyFile(t *testing.T) {
	e := newE2ESetup(t)
	const key = "cbk_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"
	file := filepath.Join(t.TempDir(), "bootstrap-admin.key")
	if err := os.WriteFile(file, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(e.args, "--bootstrap-admin-key-file", file)
	r := startBinary(t, e.bin, &e.logs, args...)
	if r.bootstrapKey != "" {
		t.Fatal("a key was printed although the operator gave one")
	}
	if _, err := credbrokerv1.NewCallerServiceClient(r.connect(t, keyCreds(key)...)).ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{}); err != nil {
		t.Fatalf("the operator's key is not an admin's: %v", err)
	}
	r.stop(t)
	if !strings.Contains(e.logs.String(), "the one in --bootstrap-admin-key-file") {
		t.Fatalf("the log does not say which key the first admin's is:\n%s", e.logs.String())
	}

	r = startBinary(t, e.bin, &e.logs, e.args...)
	r.stop(t)
	if r.bootstrapKey != "" || !strings.Contains(e.logs.String(), "no admin key is shown") || !strings.Contains(e.logs.String(), "credbroker callers create ID --role admin") {
		t.Fatalf("a restart does not say why no key is shown:\n%s", e.logs.String())
	}
	if strings.Contains(e.logs.String(), key) {
		t.Fatal("the log holds the key")
	}

	if err := os.WriteFile(file, []byte("hunter2"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(e.bin, "serve", "--data-dir", filepath.Join(t.TempDir(), "new"), "--bootstrap-admin-key-file", file).CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "--bootstrap-admin-key-file: a caller key is \"cbk_\"") || strings.Contains(string(out), "hunter2") {
		t.Fatalf("a weak key: exit %d:\n%s", code, out)
	}
}

// exitCode is a finished command's exit code.
func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
