package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const unitFile = "../../deploy/systemd/credbroker.service"

// The systemd unit passes `systemd-analyze verify`, and its hardening
// scores "OK" (exposure at most 2.0 of 10; --threshold counts in tenths) in `systemd-analyze security`.
// Its ExecStart, with the directories systemd would give it and the files
// its install steps make, starts the broker over TLS with the operator's
// admin key, printing none.
func TestSystemdUnit(t *testing.T) {
	e := newE2ESetup(t)
	unit, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CREDBROKER_REQUIRE_ALL") != "" {
			t.Fatal("systemd-analyze is missing: make deps installs it")
		}
		t.Log("systemd-analyze is not installed (make deps installs it): the unit is not verified")
	} else {
		// verify wants the binary where ExecStart says; the rest is as shipped.
		local := filepath.Join(t.TempDir(), "credbroker.service")
		if err := os.WriteFile(local, []byte(strings.ReplaceAll(string(unit), "/usr/local/bin/credbroker", e.bin)), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("systemd-analyze", "verify", local).CombinedOutput(); err != nil || len(out) > 0 {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
		}
		if out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=20", local).CombinedOutput(); err != nil {
			t.Fatalf("systemd-analyze security: %v\n%s", err, out)
		}
	}

	// What systemd would give the service: its directories, and each
	// LoadCredential's file, made as the install steps say.
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command(e.bin, "dev-certs", "--dir", certs).CombinedOutput(); err != nil {
		t.Fatalf("dev-certs: %v\n%s", err, out)
	}
	adminKey := "cbk_systemd" + strings.Repeat("0", 36)
	sources := map[string]string{
		"/etc/credbroker/master.key":          e2eMasterKey,
		"/etc/credbroker/bootstrap-admin.key": adminKey + "\n",
		"/etc/credbroker/tls.crt":             readFile(t, filepath.Join(certs, "server.pem")),
		"/etc/credbroker/tls.key":             readFile(t, filepath.Join(certs, "server-key.pem")),
	}
	env := map[string]string{"CONFIGURATION_DIRECTORY": filepath.Join(dir, "etc"), "STATE_DIRECTORY": filepath.Join(dir, "state"), "CREDENTIALS_DIRECTORY": filepath.Join(dir, "credentials")}
	for _, d := range env {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	config := readFile(t, "../../deploy/systemd/credbroker.yaml")
	if err := os.WriteFile(filepath.Join(env["CONFIGURATION_DIRECTORY"], "credbroker.yaml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, m := range regexp.MustCompile(`(?m)^LoadCredential=([^:]+):(\S+)$`).FindAllStringSubmatch(string(unit), -1) {
		body, ok := sources[m[2]]
		if !ok {
			t.Fatalf("LoadCredential of %s, which the test does not know", m[2])
		}
		delete(sources, m[2])
		if err := os.WriteFile(filepath.Join(env["CREDENTIALS_DIRECTORY"], m[1]), []byte(body), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	if len(sources) > 0 {
		t.Fatalf("the unit does not load %v", sources)
	}
	start := regexp.MustCompile(`(?ms)^ExecStart=(.*?[^\\])$`).FindStringSubmatch(string(unit))
	if start == nil {
		t.Fatal("no ExecStart")
	}
	args := strings.Fields(os.Expand(strings.ReplaceAll(start[1], "\\\n", " "), func(v string) string { return env[v] }))
	if args[0] != "/usr/local/bin/credbroker" || args[1] != "serve" {
		t.Fatalf("ExecStart runs %v", args[:2])
	}
	// On free ports, for the test; the config file's others are overridden.
	cmd := exec.Command(e.bin, append(args[1:], append(serveOnFreePorts[1:], "--public-url", "https://credbroker.example.com")...)...)
	r := startServe(t, cmd, &e.logs)
	stopAfterOperatorsKey(t, r, filepath.Join(certs, "ca.pem"), adminKey)
	if !strings.Contains(e.logs.String(), `"data_dir":"`+env["STATE_DIRECTORY"]+`"`) {
		t.Fatalf("the broker does not keep its data in the state directory:\n%s", e.logs.String())
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// stopAfterOperatorsKey checks that a broker started with the operator's
// admin key (--bootstrap-admin-key-file) printed none, and takes it as an
// admin's over TLS (trusting the CA in caFile); then it stops the broker.
func stopAfterOperatorsKey(t *testing.T, r *runningBinary, caFile, adminKey string) {
	t.Helper()
	if r.bootstrapKey != "" {
		t.Fatal("the broker printed an admin key, which its log would keep")
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM([]byte(readFile(t, caFile)))
	conn := r.connect(t, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots})), grpc.WithPerRPCCredentials(client.CallerKey(adminKey)))
	if _, err := credbrokerv1.NewCallerServiceClient(conn).ListCallerKeys(context.Background(), &credbrokerv1.ListCallerKeysRequest{}); err != nil {
		t.Fatalf("the operator's admin key over TLS: %v", err)
	}
	r.stop(t)
}
