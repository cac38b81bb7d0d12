package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestConfigFile checks the precedence (command line > environment >
// config file > default), that --print-config says where each value came
// from in a form serve reads back, that it redacts secrets, and that bad
// files are refused with the file, line and key named.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "credbroker.yaml")
	write := func(s string) {
		if err := os.WriteFile(file, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# comments are fine\nlisten: 127.0.0.1:6001\nrate-limit: 5\nrate-burst: 9\ndata-dir: " + dir + "/from-file\n" +
		"jumpcloud-token-url-us: https://user:url-canary-pw@tokens.example/oauth2/token\n")
	t.Setenv("CREDBROKER_MASTER_KEY", "master-key-canary-3b8e")
	t.Setenv("CREDBROKER_RATE_LIMIT", "7")
	t.Setenv("CREDBROKER_RATE_BURST", "11")
	var out, errOut bytes.Buffer
	if code := run([]string{"serve", "--config", file, "--rate-burst", "13", "--print-config"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	printed := out.String()
	for _, want := range []string{
		`listen: "127.0.0.1:6001"  # config file`,
		`rate-limit: "7"  # environment CREDBROKER_RATE_LIMIT`,
		`rate-burst: "13"  # command line`,
		`data-dir: "` + dir + `/from-file"  # config file`,
		`ops-listen: "127.0.0.1:50053"  # default`,
		`hub-listen: "127.0.0.1:50054"  # default`,
		`jumpcloud-token-url-us: "https://user:REDACTED@tokens.example/oauth2/token"  # config file`,
		"# master key: from CREDBROKER_MASTER_KEY (redacted)",
	} {
		if !strings.Contains(printed, want) {
			t.Errorf("--print-config lacks %q:\n%s", want, printed)
		}
	}
	for _, secret := range []string{"master-key-canary-3b8e", "url-canary-pw"} {
		if strings.Contains(printed+errOut.String(), secret) {
			t.Errorf("--print-config shows %q", secret)
		}
	}
	if _, err := os.Stat(dir + "/from-file"); err == nil {
		t.Error("--print-config started the broker")
	}

	// What it prints is a config file that gives the same configuration.
	write(printed)
	os.Unsetenv("CREDBROKER_RATE_LIMIT")
	os.Unsetenv("CREDBROKER_RATE_BURST")
	out.Reset()
	if code := run([]string{"serve", "--config=" + file, "--print-config"}, &out, &errOut); code != 0 {
		t.Fatalf("reading the printed configuration back: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `rate-limit: "7"  # config file`) || !strings.Contains(out.String(), `rate-burst: "13"  # config file`) {
		t.Errorf("the printed configuration read back:\n%s", out.String())
	}

	for _, c := range []struct{ file, want string }{
		{"listen: 127.0.0.1:1\nbogus: 1\n", `line 2: "bogus" is not a flag of this command`},
		{"rate-limit: fast\n", "line 1: rate-limit: parse error"},
		{"listen: [a, b]\n", "line 1: listen must be a single value"},
		{"- listen\n", "want a map of flag names to values"},
	} {
		write(c.file)
		errOut.Reset()
		if code := run([]string{"serve", "--config", file}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), file) || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("config %q: exit %d, %s; want %q", c.file, code, errOut.String(), c.want)
		}
	}
	t.Setenv("CREDBROKER_CONFIG", filepath.Join(dir, "missing.yaml"))
	errOut.Reset()
	if code := run([]string{"serve"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "missing.yaml") {
		t.Errorf("CREDBROKER_CONFIG naming a missing file: exit %d, %s", code, errOut.String())
	}
}
