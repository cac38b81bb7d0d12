package main

import (
	"bytes"
	"encoding/json"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// readmeCommands returns the commands in the code blocks of the README's
// section headed heading, up to the next heading: the lines that start with
// one of prefixes, joined with the lines that continue them (a trailing
// backslash, or a quote still open).
func readmeCommands(t *testing.T, heading string, prefixes ...string) []string {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n"+heading+"\n")
	if !ok {
		t.Fatalf("README has no section %q", heading)
	}
	var cmds []string
	var cur string
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "#") {
			break
		}
		code := strings.TrimSpace(line)
		if cur == "" {
			for _, p := range prefixes {
				if strings.HasPrefix(code, p) {
					cur = code
				}
			}
			if cur == "" {
				continue
			}
		} else {
			cur += "\n" + code
		}
		if !strings.HasSuffix(cur, `\`) && strings.Count(cur, "'")%2 == 0 {
			cmds = append(cmds, cur)
			cur = ""
		}
	}
	return cmds
}

// readmeShell runs README commands in the repository root, as a reader
// would, with the broker's real addresses in place of the documented ones.
type readmeShell struct {
	t    *testing.T
	env  []string
	repl *strings.Replacer
}

// run runs cmd and returns its output; an export line sets the variable for
// the commands after it.
func (sh *readmeShell) run(cmd string) string {
	sh.t.Helper()
	cmd = sh.repl.Replace(cmd)
	if name, value, ok := strings.Cut(strings.TrimPrefix(cmd, "export "), "="); ok && strings.HasPrefix(cmd, "export ") {
		sh.env = append(sh.env, name+"="+strings.Trim(value, `"`))
		return ""
	}
	c := exec.Command("bash", "-c", cmd)
	c.Dir = filepath.Join("..", "..")
	c.Env = append(os.Environ(), sh.env...)
	out, err := c.CombinedOutput()
	if err != nil {
		sh.t.Fatalf("README command failed: %v\n%s\n%s", err, cmd, out)
	}
	if strings.Contains(string(out), `"error"`) {
		sh.t.Fatalf("README command was refused:\n%s\n%s", cmd, out)
	}
	return string(out)
}

// TestREADMEGrpcurlCommands runs every grpcurl (and proxy curl) command of
// the README's walkthrough, word for word, against the real broker and the
// JumpCloud fake with the stand-in's documented client, secrets and API key;
// then those of its mutual TLS section. The README cannot go stale.
func TestREADMEGrpcurlCommands(t *testing.T) {
	e := newE2ESetup(t)
	e.fake.SetClient("demo-client", "demo-secret")
	e.fake.AddClientSecret("demo-client", "demo-secret-2")
	e.fake.SetAPIKey("demo-api-key", "")
	r := startBinary(t, e.bin, &e.logs, e.args...)

	cmds := readmeCommands(t, "## Try it end to end, without a JumpCloud account", "go tool grpcurl", "curl ")
	all := strings.Join(cmds, "\n")
	for _, task := range []string{"jumpcloud_service_account", "jumpcloud_api_key", "CreateCallerKey", "AddAccountGrant", "GetToken",
		"ListAuditEvents", "AddAccountSecret", "RemoveAccountSecret", "GetAccount", "ListAccounts", "UpdateAccount", "RevokeCallerKey", "DeleteAccount", "/proxy/"} {
		if !strings.Contains(all, task) {
			t.Errorf("the README walkthrough has no command for %s", task)
		}
	}
	sh := &readmeShell{t: t, env: []string{"ADMIN=authorization: Bearer " + r.bootstrapKey},
		repl: strings.NewReplacer("127.0.0.1:50051", r.addr, "127.0.0.1:50052", r.proxyAddr)}
	for _, cmd := range cmds {
		out := sh.run(cmd)
		if strings.Contains(cmd, "CreateCallerKey") {
			var created struct{ Key string }
			if err := json.Unmarshal([]byte(out), &created); err != nil || created.Key == "" {
				t.Fatalf("CreateCallerKey printed no key: %v\n%s", err, out)
			}
			sh.env = append(sh.env, "BILLING=authorization: Bearer "+created.Key)
		}
		if strings.Contains(cmd, "GetToken") && !strings.Contains(out, `"accessToken"`) {
			t.Errorf("GetToken printed no token:\n%s", out)
		}
	}
	if e.fake.APIRequests() != 3 { // the API key proven once, then the two proxied calls
		t.Errorf("the JumpCloud API got %d requests, want 3", e.fake.APIRequests())
	}
	t.Logf("ran %d README commands", len(cmds))

	certs := t.TempDir()
	if out, err := exec.Command(e.bin, "dev-certs", "--dir", certs).CombinedOutput(); err != nil {
		t.Fatalf("dev-certs: %v\n%s", err, out)
	}
	var tlsLogs bytes.Buffer // the first broker still writes into e.logs
	tlsBroker := startBinary(t, e.bin, &tlsLogs, "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--jumpcloud-token-url-us", e.fakeURL+jumpcloudfake.TokenPath, "--tls-cert", certs+"/server.pem", "--tls-key", certs+"/server-key.pem",
		"--client-ca", certs+"/ca.pem", "--bootstrap-admin-principal", "spiffe://credbroker.test/admin")
	tlsCmds := readmeCommands(t, "### The same with mutual TLS", "go tool grpcurl", "export ")
	sh = &readmeShell{t: t, repl: strings.NewReplacer("127.0.0.1:50051", tlsBroker.addr, "credbroker-certs/", certs+"/")}
	for _, cmd := range tlsCmds {
		out := sh.run(cmd)
		if strings.Contains(cmd, "GetToken") && !strings.Contains(out, `"accessToken"`) {
			t.Errorf("GetToken over mTLS printed no token:\n%s", out)
		}
	}
	if len(tlsCmds) < 5 {
		t.Errorf("the README's mutual TLS section has %d commands", len(tlsCmds))
	}
}

// TestREADMECluster runs the README's local cluster, command for command:
// the JumpCloud stand-in, three dev-etcd members and three replicas (on
// free ports in place of the documented ones), then links an account on
// the first replica and gets its token from the second and through the
// third's egress proxy.
func TestREADMECluster(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	cmds := readmeCommands(t, "## Run it as a cluster", "go build", "./credbroker", "export ", "printf ", "curl ")
	// The documented addresses, each moved to a free port.
	var pairs []string
	for _, addr := range regexp.MustCompile(`127\.0\.0\.1:\d+`).FindAllString(strings.Join(cmds, "\n"), -1) {
		if !slices.Contains(pairs, addr) {
			pairs = append(pairs, addr, freePort(t))
		}
	}
	workDir := t.TempDir()
	sh := &readmeShell{t: t, repl: strings.NewReplacer(append(pairs, "./credbroker ", bin+" ", "--data-dir etcd-", "--data-dir "+workDir+"/etcd-")...)}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex // guards servers and key, for members started at once
		servers []*exec.Cmd
		key     string
		ran     = map[string]int{}
	)
	defer func() {
		for _, c := range servers {
			_ = c.Process.Kill()
		}
		wg.Wait()
	}()
	// start runs a long-running command and waits until it prints ready.
	start := func(cmd, ready string) {
		t.Helper()
		args := strings.Fields(sh.repl.Replace(cmd))
		c := exec.Command(args[0], args[1:]...)
		c.Env = append(os.Environ(), sh.env...)
		c.Dir = workDir // where the replicas' default data directories go
		out := &lockedWriter{w: &bytes.Buffer{}}
		c.Stdout, c.Stderr = out, out
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		servers = append(servers, c)
		wg.Go(func() { _ = c.Wait() })
		mu.Unlock()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(out.String(), ready) {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not print %q within 30s:\n%s", cmd, ready, out)
			}
			time.Sleep(20 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		if m := regexp.MustCompile(`cbk_\S+`).FindString(out.String()); m != "" && key == "" {
			key = m
		}
	}
	var members []string
	for _, cmd := range cmds {
		switch {
		case strings.HasPrefix(cmd, "go build"):
		case strings.HasPrefix(cmd, "./credbroker fake-jumpcloud"):
			start(cmd+" --listen 127.0.0.1:8085", "fake JumpCloud API")
			ran["fake-jumpcloud"]++
		case strings.HasPrefix(cmd, "./credbroker dev-etcd"):
			members = append(members, cmd) // a member serves once a quorum has started
			if len(members) == 3 {
				var mwg sync.WaitGroup
				for _, m := range members {
					mwg.Go(func() { start(m, "serving clients") })
				}
				mwg.Wait()
				ran["dev-etcd"] += 3
			}
		case strings.HasPrefix(cmd, "./credbroker serve"):
			start(cmd, "credbroker listening")
			ran["serve"]++
		case strings.HasPrefix(cmd, "export CREDBROKER_CALLER_KEY="):
			mu.Lock()
			printed := key
			mu.Unlock()
			if printed == "" {
				t.Fatal("the first replica printed no admin caller key")
			}
			sh.env = append(sh.env, "CREDBROKER_CALLER_KEY="+printed)
		default:
			out := sh.run(cmd)
			switch {
			case strings.Contains(cmd, "token get"):
				if !strings.Contains(out, "Bearer") {
					t.Errorf("token get on another replica printed no token:\n%s", out)
				}
				ran["token get"]++
			case strings.HasPrefix(cmd, "curl"):
				if !strings.Contains(out, "/v2/systems") {
					t.Errorf("the proxied call on a third replica did not reach the API:\n%s", out)
				}
				ran["curl"]++
			}
		}
	}
	if want := map[string]int{"fake-jumpcloud": 1, "dev-etcd": 3, "serve": 3, "token get": 1, "curl": 1}; !maps.Equal(ran, want) {
		t.Errorf("ran %v of the README's cluster commands, want %v", ran, want)
	}
}
