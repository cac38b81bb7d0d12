package main

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const cliAPIKey = "cli-canary-api-key-5e1f"

// cli runs the admin commands of the real binary against a running broker.
type cli struct {
	t    *testing.T
	bin  string
	addr string
	// seen is everything the commands printed, for the leak scan.
	seen bytes.Buffer
}

// run runs the command with key as CREDBROKER_CALLER_KEY and stdin as its
// input, and returns what it printed and its exit code.
func (c *cli) run(key, stdin string, args ...string) (stdout, stderr string, code int) {
	c.t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(), "CREDBROKER_CALLER_KEY="+key, "CREDBROKER_ADDR="+c.addr)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		c.t.Fatal(err)
	}
	c.seen.Write(out.Bytes())
	c.seen.Write(errOut.Bytes())
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

// ok runs a command that must succeed and returns its standard output.
func (c *cli) ok(key, stdin string, args ...string) string {
	c.t.Helper()
	out, errOut, code := c.run(key, stdin, args...)
	if code != 0 {
		c.t.Fatalf("credbroker %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// fails runs a command that must fail with an error containing each of want.
func (c *cli) fails(key, stdin string, args []string, want ...string) {
	c.t.Helper()
	c.exits(1, key, stdin, args, want...)
}

// misused runs a command line that is wrong as typed: it exits with 2 and
// says each of want.
func (c *cli) misused(key, stdin string, args []string, want ...string) {
	c.t.Helper()
	c.exits(2, key, stdin, args, want...)
}

func (c *cli) exits(wantCode int, key, stdin string, args []string, want ...string) {
	c.t.Helper()
	out, errOut, code := c.run(key, stdin, args...)
	if code != wantCode {
		c.t.Errorf("credbroker %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, wantCode, out, errOut)
	}
	for _, w := range want {
		if !strings.Contains(errOut, w) {
			c.t.Errorf("credbroker %s: the error does not say %q:\n%s", strings.Join(args, " "), w, errOut)
		}
	}
}

// okJSON runs a command with --output json and decodes its answer into m.
func (c *cli) okJSON(key, stdin string, m proto.Message, args ...string) {
	c.t.Helper()
	if err := protojson.Unmarshal([]byte(c.ok(key, stdin, append(args, "--output", "json")...)), m); err != nil {
		c.t.Fatalf("credbroker %s --output json: %v", strings.Join(args, " "), err)
	}
}

// TestAdminCLI does every admin task with the CLI against the real binary:
// link each kind of account (secrets on standard input and at a prompt),
// list, get, update, grant, get a token, read the audit trail, revoke,
// delete; checks the tables, the JSON and the errors, and that no secret
// is ever printed.
func TestAdminCLI(t *testing.T) {
	e := newE2ESetup(t)
	e.fake.SetAPIKey(cliAPIKey, "")
	r := startBinary(t, e.bin, &e.logs, e.args...)
	c := &cli{t: t, bin: e.bin, addr: r.addr}
	admin := r.bootstrapKey

	c.fails(admin, "wrong-secret\n", []string{"accounts", "link", "acme", "--client-id", "e2e-client"},
		"credentials rejected by the provider (invalid_client", "check the client ID, the client secret and the region (--region us, eu or in)")
	out := c.ok(admin, e2eClientSecret+"\n", "accounts", "link", "acme", "--client-id", "e2e-client", "--display-name", "Acme production")
	for _, want := range []string{"NAME                accounts/acme\n", "DISPLAY NAME        Acme production\n", "STATE               active\n", "SECRET              sha256:"} {
		if !strings.Contains(out, want) {
			t.Errorf("accounts link shows no %q:\n%s", want, out)
		}
	}
	c.fails(admin, "wrong-key", []string{"accounts", "link", "acme-key", "--kind", "jumpcloud-api-key"}, "credentials rejected by the provider", "check the API key")
	c.ok(admin, cliAPIKey, "accounts", "link", "acme-key", "--kind", "jumpcloud-api-key", "--label", "team=it")
	c.fails(admin, e2eClientSecret, []string{"accounts", "link", "acme", "--client-id", "e2e-client"}, "already exists", "choose another name")
	c.fails(admin, "", []string{"accounts", "link", "other", "--client-id", "e2e-client"}, "no client secret given", "pipe it on standard input")
	c.misused(admin, "", []string{"accounts", "link", "other", "--client-id", "e2e-client", "--client-secret", e2eClientSecret}, "unknown flag: --client-secret (see: credbroker accounts link --help)")
	c.misused(admin, "", []string{"accounts", "link", "other", "--kind", "oauth2", "--client-id", "x"}, "--token-url is required with --kind oauth2")
	c.misused(admin, "", []string{"accounts"}, "accounts needs a subcommand: one of add-secret,")
	c.misused(admin, "", []string{"accounts", "lnk"}, `unknown subcommand "lnk"`)

	// A secret typed at a terminal is not echoed.
	if _, err := exec.LookPath("script"); err == nil {
		typed := c.typeSecret(admin, e2eClientSecret, "accounts", "link", "typed", "--client-id", "e2e-client")
		if !strings.Contains(typed, "client secret (not shown): ") || !strings.Contains(typed, "accounts/typed") || strings.Contains(typed, e2eClientSecret) {
			t.Errorf("linking with the secret typed at the prompt:\n%s", typed)
		}
	} else {
		t.Log("no script(1) to make a terminal with; the prompt is not tested")
	}

	out = c.ok(admin, "", "accounts", "connect-link", "globex", "--kind", "jumpcloud-api-key", "--ttl", "2h")
	if !regexp.MustCompile(`ACCOUNT\s+accounts/globex\n`).MatchString(out) || !regexp.MustCompile(`LINK\s+http://127\.0\.0\.1:\d+/connect/[A-Za-z0-9_-]{43}\n`).MatchString(out) {
		t.Errorf("accounts connect-link printed:\n%s", out)
	}
	out = c.ok(admin, "canary-APP-SECRET-cli\n", "accounts", "connect-link", "oauthed", "--kind", "oauth2-code", "--authorization-url", "https://example.com/authorize",
		"--token-url", "https://example.com/token", "--client-id", "app", "--scopes", "read,write")
	if !strings.Contains(out, "/connect/") || strings.Contains(out, "canary-APP-SECRET-cli") {
		t.Errorf("accounts connect-link --kind oauth2-code printed:\n%s", out)
	}
	c.fails(admin, "", []string{"accounts", "connect-link", "acme"}, "an account with this id exists already")
	c.misused(admin, "", []string{"accounts", "connect-link", "globex", "--kind", "oauth2"}, "--kind must be jumpcloud, jumpcloud-api-key or oauth2-code")
	out = c.ok(admin, "", "callers", "create", "billing", "--description", "billing service")
	billing := regexp.MustCompile(`KEY\s+(cbk_\S+)`).FindStringSubmatch(out)
	if billing == nil {
		t.Fatalf("callers create printed no key:\n%s", out)
	}
	c.ok(admin, "", "accounts", "grant", "acme", "callerKeys/billing")
	c.ok(admin, "", "accounts", "grant", "acme-key", "callerKeys/billing")

	var list credbrokerv1.ListAccountsResponse
	c.okJSON(admin, "", &list, "accounts", "list")
	if len(list.GetAccounts()) != 3 || list.GetAccounts()[1].GetLabels()["team"] != "it" || len(list.GetAccounts()[0].GetGrants()) != 1 {
		t.Errorf("accounts list --output json = %v", &list)
	}
	table := c.ok(admin, "", "accounts", "list", "--state", "active")
	if !regexp.MustCompile(`(?m)^NAME\s+PROVIDER\s+STATE\s+REASON\s+CREDENTIALS EXPIRE\s+GRANTS\n` +
		`accounts/acme\s+jumpcloud-service-account\s+active\s+-\s+-\s+1\n` +
		`accounts/acme-key\s+jumpcloud-api-key\s+active\s+-\s+-\s+1\n`).MatchString(table) {
		t.Errorf("accounts list:\n%s", table)
	}
	if out := c.ok(admin, "", "accounts", "list", "--state", "needs-attention"); strings.Count(out, "\n") != 1 {
		t.Errorf("accounts list --state needs-attention:\n%s", out)
	}
	c.misused(admin, "", []string{"accounts", "list", "--state", "sleepy"}, "--state must be one of active, degraded, needs-attention")

	var got credbrokerv1.GetAccountResponse
	c.okJSON(admin, "", &got, "accounts", "update", "accounts/acme", "--label", "team=billing", "--label", "env=prod")
	if got.GetAccount().GetLabels()["env"] != "prod" || got.GetAccount().GetDisplayName() != "Acme production" {
		t.Errorf("accounts update: %v", &got)
	}
	c.fails(admin, "", []string{"accounts", "update", "acme"}, "nothing to change")

	// The service gets a token with its own key.
	var tok credbrokerv1.GetTokenResponse
	c.okJSON(billing[1], "", &tok, "token", "get", "acme", "--min-ttl", "5m")
	if tok.GetAccessToken() == "" || time.Until(tok.GetExpireTime().AsTime()) < 5*time.Minute {
		t.Errorf("token get: %v", &tok)
	}
	if out := c.ok(billing[1], "", "token", "get", "acme"); !strings.Contains(out, "ACCESS TOKEN  "+tok.GetAccessToken()) || !strings.Contains(out, "EXPIRES ") {
		t.Errorf("token get:\n%s", out)
	}
	c.fails(billing[1], "", []string{"token", "get", "acme-key"}, "PROXY_ONLY")
	c.fails(billing[1], "", []string{"accounts", "list"}, "needs an admin caller key")
	c.fails(admin, "", []string{"token", "get", "acme"}, "has no grant", "credbroker accounts grant")

	var events credbrokerv1.ListAuditEventsResponse
	c.okJSON(admin, "", &events, "audit", "list", "--account", "acme", "--limit", "3")
	if len(events.GetEvents()) != 3 || events.GetEvents()[0].GetMethod() != "/credbroker.v1.TokenService/GetToken" {
		t.Errorf("audit list: %v", &events)
	}
	if out := c.ok(admin, "", "audit", "list", "--principal", "callerKeys/billing"); !regexp.MustCompile(`callerKeys/billing\s+TokenService/GetToken\s+accounts/acme-key\s+FAILED_PRECONDITION`).MatchString(out) {
		t.Errorf("audit list --principal:\n%s", out)
	}

	// A read-only grant: GET and HEAD below two paths, through the egress proxy only.
	out = c.ok(admin, "", "callers", "create", "reports")
	reports := regexp.MustCompile(`KEY\s+(cbk_\S+)`).FindStringSubmatch(out)
	if reports == nil {
		t.Fatalf("callers create printed no key:\n%s", out)
	}
	out = c.ok(admin, "", "accounts", "grant", "acme", "callerKeys/reports", "--method", "get,HEAD", "--path-prefix", "/v2/systemusers", "--path-prefix", "/v2/systemgroups")
	if !regexp.MustCompile(`(?m)^GRANT\s+callerKeys/reports \(by callerKeys/bootstrap-admin\), proxy only: GET,HEAD under /v2/systemgroups /v2/systemusers$`).MatchString(out) {
		t.Errorf("accounts grant with limits:\n%s", out)
	}
	c.okJSON(admin, "", &got, "accounts", "get", "acme")
	if g := got.GetAccount().GetGrants(); len(g) != 2 || g[1].GetPrincipal() != "callerKeys/reports" ||
		strings.Join(g[1].GetHttpMethods(), ",") != "GET,HEAD" || strings.Join(g[1].GetPathPrefixes(), ",") != "/v2/systemgroups,/v2/systemusers" {
		t.Errorf("accounts get --output json shows the grants as %v", g)
	}
	c.fails(reports[1], "", []string{"token", "get", "acme"}, "egress proxy", "GRANT_LIMITED")
	c.misused(admin, "", []string{"accounts", "grant", "acme", "callerKeys/reports", "--method", "TRACE"}, "--method: invalid http_methods", `"TRACE" is not one of GET`)
	c.misused(admin, "", []string{"accounts", "grant", "acme", "callerKeys/reports", "--path-prefix", "/v2/"}, "invalid path_prefixes", "empty")
	if out := c.ok(admin, "", "accounts", "grant", "acme", "callerKeys/reports"); !regexp.MustCompile(`(?m)^GRANT\s+callerKeys/reports \(by callerKeys/bootstrap-admin\)$`).MatchString(out) {
		t.Errorf("accounts grant without limits lifts them:\n%s", out)
	}

	c.ok(admin, "", "callers", "revoke", "billing")
	if out := c.ok(admin, "", "callers", "list"); !regexp.MustCompile(`callerKeys/billing\s+caller\s+revoked`).MatchString(out) {
		t.Errorf("callers list:\n%s", out)
	}
	c.fails(billing[1], "", []string{"token", "get", "acme"}, "did not accept your identity", "CREDBROKER_CALLER_KEY")
	if out := c.ok(admin, "", "callers", "revoke", "billing"); !strings.Contains(out, "callerKeys/billing was revoked already") || !strings.Contains(out, "nothing changed") {
		t.Errorf("callers revoke of a revoked key:\n%s", out)
	}
	c.fails(admin, "", []string{"callers", "delete", "billing"}, "accounts still grant callerKeys/billing", "remove those grants first (accounts acme, acme-key)")
	c.ok(admin, "", "accounts", "ungrant", "acme", "callerKeys/billing")
	c.ok(admin, "", "accounts", "ungrant", "acme-key", "callerKeys/billing")
	if out := c.ok(admin, "", "callers", "delete", "billing"); out != "deleted callerKeys/billing\n" {
		t.Errorf("callers delete:\n%s", out)
	}
	if out := c.ok(admin, "", "callers", "list"); strings.Contains(out, "callerKeys/billing") {
		t.Errorf("callers list after the deletion:\n%s", out)
	}
	c.ok(admin, "", "callers", "create", "billing")
	c.ok(admin, "", "admins", "add", "spiffe://credbroker.test/ops")
	if out := c.ok(admin, "", "admins", "list"); out != "PRINCIPAL\nspiffe://credbroker.test/ops\n" {
		t.Errorf("admins list:\n%s", out)
	}
	c.ok(admin, "", "admins", "remove", "spiffe://credbroker.test/ops")
	c.fails(admin, "", []string{"admins", "remove", "spiffe://credbroker.test/ops"}, "not an admin principal")
	// A webhook endpoint: created with its secret shown once, listed and
	// shown with its deliveries (none answers there), deleted.
	out = c.ok(admin, "", "webhooks", "create", "ops", "--url", "http://127.0.0.1:1/hook", "--kind", "account-state-changed,account-deleted", "--account", "acme-key")
	if !regexp.MustCompile(`NAME\s+webhooks/ops\n`).MatchString(out) || !regexp.MustCompile(`SIGNING SECRET\s+whsec_[A-Za-z0-9_-]{43}\n`).MatchString(out) {
		t.Errorf("webhooks create printed:\n%s", out)
	}
	c.misused(admin, "", []string{"webhooks", "create", "bad", "--url", "https://x.example/", "--kind", "linked"}, "--kind must be one of account-deleted, account-linked")
	c.misused(admin, "", []string{"webhooks", "create", "bad", "--url", "http://x.example/"}, "must use https (http is allowed only for loopback hosts)")
	if out := c.ok(admin, "", "webhooks", "list"); !regexp.MustCompile(`webhooks/ops\s+http://127\.0\.0\.1:1/hook\s+account-state-changed,account-deleted\s+0`).MatchString(out) {
		t.Errorf("webhooks list:\n%s", out)
	}
	c.ok(admin, "", "accounts", "delete", "acme-key")
	c.fails(admin, "", []string{"accounts", "get", "acme-key"}, "account not found")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out := c.ok(admin, "", "webhooks", "get", "ops")
		if strings.Contains(out, "ATTEMPT") && strings.Contains(out, "account-deleted") && strings.Contains(out, "connection refused") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks get, once the account was deleted:\n%s", out)
		}
	}
	c.ok(admin, "", "webhooks", "delete", "ops")
	c.fails(admin, "", []string{"webhooks", "get", "ops"}, "webhook not found")
	c.fails("", "", []string{"accounts", "list"}, "no identity")
	c.misused(admin, "", []string{"accounts", "get"}, "missing arguments; usage: credbroker accounts get ID")
	out, errOut, _ := c.run(admin, "", "accounts", "list", "--broker", "127.0.0.1:1")
	if !strings.Contains(out+errOut, "cannot reach the broker at 127.0.0.1:1") {
		t.Errorf("with no broker there: %s%s", out, errOut)
	}

	if c.seen.Len() == 0 {
		t.Fatal("nothing printed to scan")
	}
	for _, secret := range []string{e2eClientSecret, cliAPIKey} {
		if strings.Contains(c.seen.String(), secret) {
			t.Errorf("the CLI printed the secret %q", secret)
		}
	}
}

// typeSecret runs a command on a terminal (script(1)), types secret once it
// prompts, and returns what the terminal showed.
func (c *cli) typeSecret(key, secret string, args ...string) string {
	c.t.Helper()
	cmd := exec.Command("script", "-qec", strings.Join(append([]string{c.bin}, args...), " "), "/dev/null")
	cmd.Env = append(os.Environ(), "CREDBROKER_CALLER_KEY="+key, "CREDBROKER_ADDR="+c.addr)
	in, err := cmd.StdinPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	var shown bytes.Buffer
	rd := bufio.NewReader(out)
	for !strings.Contains(shown.String(), "(not shown): ") {
		b, err := rd.ReadByte()
		if err != nil {
			c.t.Fatalf("no prompt: %v\n%s", err, shown.String())
		}
		shown.WriteByte(b)
	}
	// The prompt is written just before echo is turned off; typing sooner
	// would be echoed by the terminal, not by credbroker.
	time.Sleep(300 * time.Millisecond)
	if _, err := in.Write([]byte(secret + "\r")); err != nil {
		c.t.Fatal(err)
	}
	rest, _ := io.ReadAll(rd)
	shown.Write(rest)
	if err := cmd.Wait(); err != nil {
		c.t.Fatalf("%v\n%s", err, shown.String())
	}
	c.seen.Write(shown.Bytes())
	return shown.String()
}
