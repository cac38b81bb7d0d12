package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeStep is one thing the README's walkthrough has its reader do: run
// the commands of a ```sh block, start the long-running command of a
// ```sh terminal block in a terminal of its own, or stop every terminal
// (where it says "press Ctrl-C in every terminal").
type readmeStep struct {
	section string
	kind    string // "sh", "terminal" or "stop"
	text    string // the block, unindented
	// afterProse: the reader read something since the block before, so
	// the terminals started before are ready by now.
	afterProse bool
}

// readmeSteps reads the README's walkthrough steps in order. Indented code
// blocks and fenced blocks of other kinds (go, text) are not steps.
func readmeSteps(t *testing.T, readme string) []readmeStep {
	t.Helper()
	var (
		steps            []readmeStep
		section, prose   string
		afterProse       bool
		fence, info      string
		block            []string
		fenceIndentation int
	)
	endProse := func() {
		if strings.Contains(strings.Join(strings.Fields(prose), " "), "press Ctrl-C in every terminal") {
			steps = append(steps, readmeStep{section: section, kind: "stop"})
		}
		prose = ""
	}
	for _, line := range strings.Split(readme, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case fence != "" && trimmed == fence:
			if info == "sh" || info == "sh terminal" {
				kind := map[string]string{"sh": "sh", "sh terminal": "terminal"}[info]
				steps = append(steps, readmeStep{section: section, kind: kind, text: strings.Join(block, "\n"), afterProse: afterProse})
				afterProse = false
			}
			fence, block = "", nil
		case fence != "":
			block = append(block, line[min(fenceIndentation, len(line)-len(strings.TrimLeft(line, " "))):])
		case strings.HasPrefix(trimmed, "```"):
			endProse()
			fence, info = "```", strings.TrimPrefix(trimmed, "```")
			fenceIndentation = len(line) - len(strings.TrimLeft(line, " "))
		case strings.HasPrefix(line, "#"):
			endProse()
			section = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case trimmed == "":
			endProse()
		case strings.HasPrefix(line, "    ") && prose == "":
			// an indented code block: for reference, not a step
		default:
			prose += " " + trimmed
			afterProse = true
		}
	}
	if fence != "" {
		t.Fatalf("README: a code block in %q is not closed", section)
	}
	return steps
}

// shellCommands splits a block into its commands: a line, with the lines
// that continue it (a trailing backslash, a quote still open, a here
// document up to its end marker). Comment lines are dropped.
func shellCommands(block string) []string {
	var cmds []string
	var cur, heredocEnd string
	for _, line := range strings.Split(block, "\n") {
		if cur == "" && (strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#")) {
			continue
		}
		if cur != "" {
			cur += "\n"
		}
		cur += line
		switch {
		case heredocEnd != "":
			if strings.TrimSpace(line) == heredocEnd {
				heredocEnd = ""
			} else {
				continue
			}
		case hereDoc.MatchString(line):
			heredocEnd = hereDoc.FindStringSubmatch(line)[1]
			continue
		}
		if strings.HasSuffix(cur, `\`) || strings.Count(cur, "'")%2 == 1 {
			continue
		}
		cmds = append(cmds, cur)
		cur = ""
	}
	return cmds
}

var (
	hereDoc     = regexp.MustCompile(`<<'?(\w+)'?\s*$`)
	printedKey  = regexp.MustCompile(`cbk_[A-Za-z0-9_-]{43}`)
	placeholder = regexp.MustCompile(`cbk_\.\.\.[^.]*\.\.\.`)
	loopback    = regexp.MustCompile(`127\.0\.0\.1:\d+`)
)

// readmeReader follows the walkthrough as its reader would, in a clean
// environment: an empty working directory (in place of the repository's
// root, so that nothing is written into the checkout), a new HOME, no
// CREDBROKER_* variables. What differs from the README as written: the
// binary and grpcurl are built once beforehand (go run, go build and go
// tool compile nothing), paths into client/ lead to the checkout's, every
// documented loopback address is a free port of the test's (other tests
// listen at once), and where the README says to copy a printed key
// (cbk_...the key it printed...), the key printed last is pasted.
type readmeReader struct {
	t         *testing.T
	bin, root string
	work      string // the working directory
	state     string // the shell's exported variables and directory between commands
	env       []string
	repl      *strings.Replacer
	ports     map[string]string
	keys      []string // the keys printed so far, in order
	terminals []*readmeTerminal
	ran       map[string]int // commands run, by section
}

type readmeTerminal struct {
	cmd   *exec.Cmd
	out   *lockedWriter
	done  chan struct{}
	ready bool
}

// readyMarkers are what the long-running commands print once they serve.
var readyMarkers = []string{"credbroker listening", "fake JumpCloud token endpoint", "fake OAuth sign-in page", "serving clients at"}

// TestREADMEWalkthrough follows the README from "Run it" to the local
// cluster, section by section, as a reader meets them: every ```sh block's
// commands must succeed, every ```sh terminal block's command must start
// serving, and every "press Ctrl-C in every terminal" must stop them all
// cleanly. Then it checks that the walkthrough did what it says.
func TestREADMEWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and follows the README")
	}
	for _, f := range []string{"/usr/bin/python3", "../../client/typescript/node_modules"} {
		if _, err := os.Stat(f); err != nil {
			if os.Getenv("CREDBROKER_REQUIRE_ALL") != "" {
				t.Fatalf("%s is missing: run make deps", f)
			}
			t.Skipf("%s is missing (make deps installs what the README's client examples need)", f)
		}
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("../..")
	r := &readmeReader{t: t, bin: buildBinary(t), root: root, work: t.TempDir(), state: t.TempDir(), ports: map[string]string{}, ran: map[string]int{}}
	grpcurl := filepath.Join(filepath.Dir(r.bin), "grpcurl")
	build := exec.Command("go", "build", "-o", grpcurl, "github.com/fullstorydev/grpcurl/cmd/grpcurl")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building grpcurl: %v\n%s", err, out)
	}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CREDBROKER_") && !strings.HasPrefix(kv, "HOME=") {
			r.env = append(r.env, kv)
		}
	}
	// The CLI and the client examples default to 127.0.0.1:50051.
	r.env = append(r.env, "HOME="+t.TempDir(), "CREDBROKER_ADDR="+r.port("127.0.0.1:50051"))
	r.repl = strings.NewReplacer(
		"go build -o credbroker ./cmd/credbroker", "cp "+r.bin+" credbroker",
		"go run ./cmd/credbroker", r.bin,
		"go tool grpcurl", grpcurl,
		"client/python", filepath.Join(root, "client", "python"),
		"client/typescript", filepath.Join(root, "client", "typescript"),
	)
	t.Cleanup(r.killTerminals)

	outputs := map[string]string{} // what each command printed, by command as written
	for _, step := range readmeSteps(t, string(readme)) {
		switch step.kind {
		case "stop":
			r.stopTerminals(step.section)
		case "terminal":
			if step.afterProse {
				r.waitForTerminals(step.section)
			}
			r.startTerminal(step.section, step.text)
		case "sh":
			r.waitForTerminals(step.section)
			for _, cmd := range shellCommands(step.text) {
				outputs[cmd] = r.run(step.section, cmd)
			}
		}
	}
	t.Logf("commands run, by section: %v", r.ran)
	if len(r.terminals) > 0 {
		t.Fatalf("the README leaves %d commands running at its end", len(r.terminals))
	}

	for section, least := range map[string]int{
		"Run it": 1, "Try it end to end, without a JumpCloud account": 20, "The same with the admin CLI": 20,
		"The same with mutual TLS": 6, "The same in the Hub": 2, "Accounts whose users sign in by redirect": 1, "Connect links": 1,
		"Use it from Python and TypeScript": 12, "Run it as a cluster": 14,
	} {
		if r.ran[section] < least {
			t.Errorf("the README's section %q: %d commands ran, want at least %d", section, r.ran[section], least)
		}
	}
	// Every admin task has its command, and what each printed is what the
	// README says it does.
	var all strings.Builder
	for cmd := range outputs {
		all.WriteString(cmd + "\n")
	}
	for _, task := range []string{"jumpcloud_service_account", "jumpcloud_api_key", "CreateCallerKey", "AddAccountGrant", "GetToken",
		"ListAuditEvents", "AddAccountSecret", "RemoveAccountSecret", "GetAccount", "ListAccounts", "UpdateAccount", "RevokeCallerKey", "DeleteAccount",
		"accounts link", "accounts grant", "accounts ungrant", "add-secret", "remove-secret", "callers create", "callers revoke", "callers delete", "admins list", "audit list"} {
		if !strings.Contains(all.String(), task) {
			t.Errorf("the README's walkthrough has no command for %s", task)
		}
	}
	for _, c := range []struct{ command, printed string }{
		{"grpc.health.v1.Health/Check", `"status": "SERVING"`},
		{"credbroker.v1.TokenService/GetToken", `"accessToken"`},
		{"/proxy/v2/systemgroups", "systemgroups"},
		{"/proxy/organizations", "results"},
		{"credbroker token get", "Bearer"},
		{"get_token.py", ": Bearer token for http://127.0.0.1:"},
		{"get-token.js", ": Bearer token for http://127.0.0.1:"},
		{"link_account.py", ": ACCOUNT_STATE_ACTIVE"},
		{"link-account.js", ": ACCOUNT_STATE_ACTIVE"},
		{"accounts connect-link", "/connect/"},
		{"callers delete", "deleted callerKeys/reports"},
		{"/proxy/v2/systems", "systems"},
	} {
		seen := false
		for cmd, out := range outputs {
			if strings.Contains(cmd, c.command) {
				seen = true
				if !strings.Contains(out, c.printed) {
					t.Errorf("README command %s printed:\n%s\nwant %q in it", cmd, out, c.printed)
				}
			}
		}
		if !seen {
			t.Errorf("the README has no command with %q", c.command)
		}
	}
}

// port is the test's free address for a documented loopback address.
func (r *readmeReader) port(documented string) string {
	if _, ok := r.ports[documented]; !ok {
		r.ports[documented] = freePort(r.t)
	}
	return r.ports[documented]
}

// prepare is cmd as the test runs it (see readmeReader).
func (r *readmeReader) prepare(cmd string) string {
	cmd = loopback.ReplaceAllStringFunc(r.repl.Replace(cmd), r.port)
	return placeholder.ReplaceAllStringFunc(cmd, func(string) string {
		if len(r.keys) == 0 {
			r.t.Fatalf("the README has its reader copy a key before one was printed: %s", cmd)
		}
		return r.keys[len(r.keys)-1]
	})
}

// shell runs script in bash, in the reader's shell: its working directory
// and exported variables as the previous command left them.
func (r *readmeReader) shell(script string) *exec.Cmd {
	cwd, env := filepath.Join(r.state, "cwd"), filepath.Join(r.state, "env")
	if _, err := os.Stat(cwd); err != nil {
		_ = os.WriteFile(cwd, []byte(r.work), 0o600)
		_ = os.WriteFile(env, nil, 0o600)
	}
	c := exec.Command("bash", "-c", `set -eo pipefail; cd "$(cat `+cwd+`)"; source `+env+"\n"+script)
	c.Env = r.env
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

// run runs one command and returns what it printed; it must succeed.
func (r *readmeReader) run(section, cmd string) string {
	r.t.Helper()
	c := r.shell(r.prepare(cmd) + "\nexport -p > " + filepath.Join(r.state, "env") + "; pwd > " + filepath.Join(r.state, "cwd"))
	out, err := c.CombinedOutput()
	if err != nil {
		r.t.Fatalf("README, %s: %s\nfailed: %v\n%s", section, cmd, err, out)
	}
	r.ran[section]++
	r.notePrintedKeys(string(out))
	return string(out)
}

func (r *readmeReader) notePrintedKeys(out string) {
	for _, k := range printedKey.FindAllString(out, -1) {
		if !slices.Contains(r.keys, k) {
			r.keys = append(r.keys, k)
		}
	}
}

// startTerminal starts a long-running command, where the README starts
// one in a terminal of its own. A broker or stand-in started without an
// address listens on the test's ports for its documented defaults.
func (r *readmeReader) startTerminal(section, cmd string) {
	r.t.Helper()
	fields := strings.Fields(cmd)
	switch {
	case !strings.Contains(cmd, "--listen") && slices.Contains(fields, "serve"):
		cmd += " --listen 127.0.0.1:50051 --proxy-listen 127.0.0.1:50052 --ops-listen 127.0.0.1:50053 --hub-listen 127.0.0.1:50054"
	case !strings.Contains(cmd, "--listen") && slices.Contains(fields, "fake-jumpcloud"):
		cmd += " --listen 127.0.0.1:8085"
	case !strings.Contains(cmd, "--listen") && slices.Contains(fields, "fake-oauth"):
		cmd += " --listen 127.0.0.1:8086"
	}
	term := &readmeTerminal{out: &lockedWriter{w: &bytes.Buffer{}}, done: make(chan struct{})}
	term.cmd = r.shell("exec " + r.prepare(cmd))
	term.cmd.Stdout, term.cmd.Stderr = term.out, term.out
	if err := term.cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	go func() { _ = term.cmd.Wait(); close(term.done) }()
	r.terminals = append(r.terminals, term)
	r.ran[section]++
}

// waitForTerminals waits until every running terminal serves.
func (r *readmeReader) waitForTerminals(section string) {
	r.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for _, term := range r.terminals {
		for !term.ready {
			out := term.out.String()
			term.ready = slices.ContainsFunc(readyMarkers, func(m string) bool { return strings.Contains(out, m) })
			select {
			case <-term.done:
				r.t.Fatalf("README, %s: %s exited:\n%s", section, strings.Join(term.cmd.Args, " "), out)
			default:
			}
			if !term.ready && time.Now().After(deadline) {
				r.t.Fatalf("README, %s: %s did not start serving within a minute:\n%s", section, strings.Join(term.cmd.Args, " "), out)
			}
			if !term.ready {
				time.Sleep(20 * time.Millisecond)
			}
		}
		r.notePrintedKeys(term.out.String())
	}
}

// stopTerminals presses Ctrl-C in every terminal; each must stop cleanly.
func (r *readmeReader) stopTerminals(section string) {
	r.t.Helper()
	r.waitForTerminals(section)
	for _, term := range r.terminals {
		_ = term.cmd.Process.Signal(syscall.SIGINT)
	}
	for _, term := range r.terminals {
		select {
		case <-term.done:
		case <-time.After(30 * time.Second):
			r.t.Fatalf("README, %s: %s did not stop within 30s of Ctrl-C:\n%s", section, strings.Join(term.cmd.Args, " "), term.out)
		}
		if !term.cmd.ProcessState.Success() {
			r.t.Fatalf("README, %s: %s did not stop cleanly on Ctrl-C: %v\n%s", section, strings.Join(term.cmd.Args, " "), term.cmd.ProcessState, term.out)
		}
	}
	r.terminals = nil
}

func (r *readmeReader) killTerminals() {
	for _, term := range r.terminals {
		_ = syscall.Kill(-term.cmd.Process.Pid, syscall.SIGKILL)
		<-term.done
	}
}
