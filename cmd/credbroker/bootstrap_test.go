package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

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

	// Every admin key gone (the last one expired): a start says how to get
	// back in, and one with a new key in the file makes it an admin's.
	r = startBinary(t, e.bin, &e.logs, e.args...)
	callersAPI := credbrokerv1.NewCallerServiceClient(r.connect(t, keyCreds(key)...))
	if _, err := callersAPI.CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{
		KeyId: "short", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_ADMIN, ExpireTime: timestamppb.New(time.Now().Add(2 * time.Second))},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := callersAPI.RevokeCallerKey(context.Background(), &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/bootstrap-admin"}); err != nil {
		t.Fatal(err)
	}
	r.stop(t)
	time.Sleep(2 * time.Second)
	var logs bytes.Buffer
	r = startBinary(t, e.bin, &logs, e.args...)
	r.stop(t)
	if !strings.Contains(logs.String(), "no usable admin identity is left") || !strings.Contains(logs.String(), "restart the broker with --bootstrap-admin-key-file") {
		t.Fatalf("a start with no admin left does not say how to get back in:\n%s", logs.String())
	}
	const newKey = "cbk_9876543210abcdefghijklmnopqrstuvwxyzABCDEFG"
	if err := os.WriteFile(file, []byte(newKey), 0o600); err != nil {
		t.Fatal(err)
	}
	logs.Reset()
	r = startBinary(t, e.bin, &logs, args...)
	if _, err := credbrokerv1.NewCallerServiceClient(r.connect(t, keyCreds(newKey)...)).ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{}); err != nil {
		t.Fatalf("the recovery key is not an admin's: %v\n%s", err, logs.String())
	}
	r.stop(t)
	if !strings.Contains(logs.String(), "no usable admin identity was left: made the key in --bootstrap-admin-key-file the admin key callerKeys/recovered-admin-") {
		t.Fatalf("the recovery is not logged:\n%s", logs.String())
	}

	if err := os.WriteFile(file, []byte("hunter2"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(e.bin, "serve", "--data-dir", filepath.Join(t.TempDir(), "new"), "--bootstrap-admin-key-file", file).CombinedOutput()
	if code := exitCode(err); code != 2 || !strings.Contains(string(out), "--bootstrap-admin-key-file: a caller key is \"cbk_\"") || strings.Contains(string(out), "hunter2") {
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
