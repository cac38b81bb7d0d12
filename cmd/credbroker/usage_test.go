package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A command line that is wrong as typed exits with 2 and one line that
// names the fault as the user wrote it (--flag, not -flag) and where help
// is; help asked for exits with 0; nothing else does but success.
func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		says string
	}{
		{[]string{"serve", "-bogus"}, 2, "credbroker: unknown flag: --bogus (see: credbroker serve --help)\n"},
		{[]string{"serve", "--rate-limit", "often"}, 2, `credbroker: invalid value "often" for flag --rate-limit: parse error (see: credbroker serve --help)` + "\n"},
		{[]string{"serve", "--listen"}, 2, "credbroker: flag needs an argument: --listen (see: credbroker serve --help)\n"},
		{[]string{"serve", "now"}, 2, "credbroker: unexpected arguments: now (see: credbroker serve --help)\n"},
		{[]string{"serve", "--log-format", "xml"}, 2, `credbroker: --log-format must be text or json, not "xml"` + "\n"},
		{[]string{"dev-certs", "--clients", "admin"}, 2, `credbroker: --clients: "admin" is not NAME=PRINCIPAL` + "\n"},
		{[]string{"backup"}, 2, "credbroker: --out is required\n"},
		{[]string{"accounts"}, 2, "credbroker: accounts needs a subcommand: one of "},
		{[]string{"callers", "rm"}, 2, `credbroker: callers: unknown subcommand "rm"; choose one of: `},
		{[]string{"serve", "--storage", "foo"}, 2, `credbroker: --storage must be bbolt or etcd, not "foo"` + "\n"},
		{[]string{"serve", "--refresh-margin", "-5m"}, 2, "credbroker: --refresh-margin must not be negative, not -5m0s (0 means its default) (see: credbroker serve --help)\n"},
		{[]string{"serve", "--etcd-endpoints", "http://127.0.0.1:2379"}, 2, `credbroker: --etcd-endpoints is set, but --storage is "bbolt": add --storage etcd, or drop the endpoints (see: credbroker serve --help)` + "\n"},
		{[]string{"serve", "--bootstrap-admin-key-file", "/nonexistent/key"}, 2, "credbroker: --bootstrap-admin-key-file: open /nonexistent/key: no such file or directory\n"},
		{[]string{"version", "--bogus"}, 2, "credbroker: version takes no arguments\n"},
		{[]string{"--bogus"}, 2, "credbroker: unknown flag --bogus: flags go after a command (see: credbroker help)\n"},
		{[]string{"frobnicate"}, 2, `credbroker: unknown command "frobnicate" (see: credbroker help)` + "\n"},
		{[]string{}, 2, "credbroker keeps third-party API credentials"},
		{[]string{"help"}, 0, "credbroker keeps third-party API credentials"},
		{[]string{"serve", "--help"}, 0, "Usage: credbroker serve [flags]"},
		{[]string{"callers", "help"}, 0, "Usage: credbroker callers {"},
	} {
		var out bytes.Buffer
		code := run(c.args, &out, &out)
		if code != c.code || !strings.HasPrefix(out.String(), c.says) {
			t.Errorf("credbroker %s: exit %d, printed:\n%s\nwant exit %d and %q", strings.Join(c.args, " "), code, out.String(), c.code, c.says)
		}
		if c.code == 2 && len(c.args) > 0 && strings.Count(out.String(), "\n") > 1 {
			t.Errorf("credbroker %s printed more than the fault:\n%s", strings.Join(c.args, " "), out.String())
		}
	}
}

// What stops a start names the flag to change: a data directory that
// cannot be made, a master key file that is not there, an address in use
// (found before anything is created).
func TestStartErrorsNameTheFlag(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	free := []string{"--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0"}
	for _, c := range []struct {
		args []string
		code int // 2: the configuration, refused before anything was made
		says string
	}{
		{[]string{"--data-dir", filepath.Join(file, "data")}, 1, "credbroker: --data-dir: cannot create the data directory: mkdir " + file + ": not a directory\n"},
		{[]string{"--data-dir", filepath.Join(dir, "a"), "--master-key-file", filepath.Join(dir, "no.key")}, 2, "credbroker: --master-key-file " + filepath.Join(dir, "no.key") + ": no such master key file\n"},
		{[]string{"--data-dir", filepath.Join(dir, "b"), "--hub-listen", busy.Addr().String()}, 1, "credbroker: --hub-listen " + busy.Addr().String() + ": the address is in use, by another program or another credbroker; stop it, or choose another address with --hub-listen\n"},
	} {
		var out bytes.Buffer
		if code := run(append(append([]string{"serve"}, free...), c.args...), &out, &out); code != c.code || out.String() != c.says {
			t.Errorf("credbroker serve %s: exit %d, printed:\n%s\nwant exit %d and:\n%s", strings.Join(c.args, " "), code, out.String(), c.code, c.says)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "b")); err == nil {
		t.Error("a start that found its address in use made the data directory")
	}
}

// dev-certs leaves a CA that a broker may trust alone, unless --force.
func TestDevCertsKeepsItsCA(t *testing.T) {
	dir := t.TempDir()
	var out bytes.Buffer
	if code := run([]string{"dev-certs", "--dir", dir}, &out, &out); code != 0 {
		t.Fatalf("dev-certs: exit %d\n%s", code, out.String())
	}
	ca := readFile(t, filepath.Join(dir, "ca.pem"))
	out.Reset()
	if code := run([]string{"dev-certs", "--dir", dir}, &out, &out); code != 1 || !strings.Contains(out.String(), "holds a CA already (ca.pem), which a running broker may trust: pass --force") || readFile(t, filepath.Join(dir, "ca.pem")) != ca {
		t.Fatalf("dev-certs again: exit %d, the CA replaced: %v\n%s", code, readFile(t, filepath.Join(dir, "ca.pem")) != ca, out.String())
	}
	if code := run([]string{"dev-certs", "--dir", dir, "--force"}, &out, &out); code != 0 || readFile(t, filepath.Join(dir, "ca.pem")) == ca {
		t.Fatalf("dev-certs --force: exit %d, the CA kept", code)
	}
}

// The admin commands read variables of their own, never serve's
// (CREDBROKER_TLS_CERT is the broker's certificate) nor one for a
// command's own flag.
func TestCLIReadsItsOwnVariables(t *testing.T) {
	t.Setenv("CREDBROKER_TLS_CERT", "/nonexistent/server.pem")
	t.Setenv("CREDBROKER_STATE", "sleepy")
	t.Setenv("CREDBROKER_OUTPUT", "yaml")
	t.Setenv("CREDBROKER_CALLER_KEY", "cbk_"+strings.Repeat("x", 43))
	t.Setenv("CREDBROKER_ADDR", "127.0.0.1:1")
	var out bytes.Buffer
	if code := run([]string{"accounts", "list"}, &out, &out); code != 1 || !strings.Contains(out.String(), "cannot reach the broker at 127.0.0.1:1") {
		t.Fatalf("accounts list: exit %d\n%s", code, out.String())
	}
	t.Setenv("CREDBROKER_CLI_OUTPUT", "yaml")
	out.Reset()
	if code := run([]string{"accounts", "list"}, &out, &out); code != 2 || !strings.Contains(out.String(), `--output must be table or json, not "yaml"`) {
		t.Fatalf("accounts list with CREDBROKER_CLI_OUTPUT=yaml: exit %d\n%s", code, out.String())
	}
}
