package main

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// clientExample is one language's examples in client/: how to build them
// and the commands that link an account and get its token.
type clientExample struct {
	lang  string
	dir   string   // under client/, where the commands run
	needs []string // files that `make deps` installs
	build []string // command run once before the examples, if any
	link  []string // ... ACCOUNT_ID CLIENT_ID, the secret on stdin
	get   []string // ... ACCOUNT
	watch []string // ... [COUNT]
	// receive runs the webhook receiver: ... PORT [COUNT]
	receive []string
}

var clientExamples = []clientExample{
	{
		lang: "python", dir: "python",
		needs:   []string{"/usr/bin/python3", "/usr/lib/python3/dist-packages/grpc/__init__.py", "/usr/lib/python3/dist-packages/google/protobuf/__init__.py"},
		link:    []string{"/usr/bin/python3", "examples/link_account.py"},
		get:     []string{"/usr/bin/python3", "examples/get_token.py"},
		watch:   []string{"/usr/bin/python3", "examples/watch_events.py"},
		receive: []string{"/usr/bin/python3", "examples/webhook_receiver.py"},
	},
	{
		lang: "typescript", dir: "typescript",
		needs:   []string{"node_modules/.bin/tsc", "node_modules/@connectrpc/connect-node/package.json"},
		build:   []string{"node_modules/.bin/tsc"},
		link:    []string{"node", "dist/examples/link-account.js"},
		get:     []string{"node", "dist/examples/get-token.js"},
		watch:   []string{"node", "dist/examples/watch-events.js"},
		receive: []string{"node", "dist/examples/webhook-receiver.js"},
	},
}

// TestClientExamples runs the Python and TypeScript examples against the
// real broker and the JumpCloud fake: an admin links an account (and is
// refused with a wrong secret), a service gets its token and the example
// prints the token's expiry, which must be the broker's.
func TestClientExamples(t *testing.T) {
	e := newE2ESetup(t)
	r := startBinary(t, e.bin, &e.logs, e.args...)
	adminConn := r.connect(t, keyCreds(r.bootstrapKey)...)
	serviceKey := createCheckerKey(t, adminConn)
	accounts := credbrokerv1.NewAccountServiceClient(adminConn)
	for _, ex := range clientExamples {
		t.Run(ex.lang, func(t *testing.T) {
			dir := filepath.Join("..", "..", "client", ex.dir)
			for _, f := range ex.needs {
				if !filepath.IsAbs(f) {
					f = filepath.Join(dir, f)
				}
				if _, err := os.Stat(f); err != nil {
					if os.Getenv("CREDBROKER_REQUIRE_ALL") != "" {
						t.Fatalf("%s is missing: run make deps", f)
					}
					t.Skipf("%s is missing (make deps installs it)", f)
				}
			}
			addr := r.addr
			run := func(key, stdin string, args ...string) (string, error) {
				cmd := exec.Command(args[0], args[1:]...)
				cmd.Dir = dir
				cmd.Env = append(os.Environ(), "CREDBROKER_ADDR="+addr, "CREDBROKER_CALLER_KEY="+key, "PYTHONPATH=.", "PYTHONDONTWRITEBYTECODE=1")
				cmd.Stdin = strings.NewReader(stdin)
				out, err := cmd.CombinedOutput()
				if strings.Contains(string(out), e2eClientSecret) {
					t.Errorf("%s printed the client secret", strings.Join(args, " "))
				}
				return strings.TrimSpace(string(out)), err
			}
			if ex.build != nil {
				if out, err := run("", "", ex.build...); err != nil {
					t.Fatalf("%s: %v\n%s", strings.Join(ex.build, " "), err, out)
				}
			}
			// Misused, they say how to use them, and exit with 2.
			for _, c := range []struct {
				key  string
				args []string
				says string
			}{{r.bootstrapKey, ex.link, "usage: "}, {r.bootstrapKey, ex.get, "usage: "}, {"", append(ex.get, "accounts/acme"), "set CREDBROKER_CALLER_KEY"}} {
				out, err := run(c.key, "", c.args...)
				if exitCode(err) != 2 || !strings.HasPrefix(out, c.says) {
					t.Errorf("%s: exit %d\n%s\nwant exit 2 and %q", strings.Join(c.args, " "), exitCode(err), out, c.says)
				}
			}
			id := "acme-" + ex.lang
			out, err := run(r.bootstrapKey, "wrong-secret\n", append(ex.link, id, "e2e-client")...)
			// Both languages print codes and states alike: as gRPC and the proto name them.
			if err == nil || !strings.HasPrefix(out, "credbroker refused: FAILED_PRECONDITION: the provider rejected the credentials") {
				t.Errorf("linking with a wrong secret: %v\n%s", err, out)
			}
			out, err = run(r.bootstrapKey, e2eClientSecret+"\n", append(ex.link, id, "e2e-client")...)
			if want := "linked accounts/" + id + " (client e2e-client): ACCOUNT_STATE_ACTIVE"; err != nil || out != want {
				t.Fatalf("link example: %v\n%s\nwant %s", err, out, want)
			}
			if _, err := accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/" + id, Principal: "callerKeys/checker"}); err != nil {
				t.Fatal(err)
			}
			out, err = run(serviceKey, "", append(ex.get, "accounts/"+id)...)
			m := regexp.MustCompile(`^accounts/` + id + `: Bearer token for http://127\.0\.0\.1:\d+/api expires (\S+) \(in (\d+) s\)$`).FindStringSubmatch(out)
			if err != nil || m == nil {
				t.Fatalf("token example: %v\n%s", err, out)
			}
			tok, err := credbrokerv1.NewTokenServiceClient(r.connect(t, keyCreds(serviceKey)...)).GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
			if err != nil {
				t.Fatal(err)
			}
			printed, err := time.Parse(time.RFC3339, m[1])
			left, _ := strconv.Atoi(m[2])
			if want := tok.GetExpireTime().AsTime(); err != nil || printed.Sub(want).Abs() >= time.Second || (time.Until(want)-time.Duration(left)*time.Second).Abs() > time.Minute {
				t.Errorf("the example printed expiry %s (in %s s); the broker's token expires %s", m[1], m[2], want)
			}
			out, err = run(serviceKey, "", append(ex.get, "accounts/ghost")...)
			if err == nil || !strings.HasPrefix(out, "credbroker refused: PERMISSION_DENIED: callerKeys/checker has no grant for accounts/ghost") {
				t.Errorf("a token of an account without a grant: %v\n%s", err, out)
			}

			// The watcher prints an account linked and deleted; started
			// again after the first event, it prints the second.
			watched := "watch-" + ex.lang
			lines := watchExample(t, dir, r.addr, r.bootstrapKey, "", append(ex.watch, "2"), func() {
				if _, err := accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{AccountId: watched, Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{
					JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US},
				}}); err != nil {
					t.Fatal(err)
				}
				if _, err := accounts.DeleteAccount(context.Background(), &credbrokerv1.DeleteAccountRequest{Name: "accounts/" + watched}); err != nil {
					t.Fatal(err)
				}
			})
			linked := regexp.MustCompile(`^EVENT_KIND_ACCOUNT_LINKED accounts/` + watched + ` by callerKeys/bootstrap-admin \(resume token (\S+)\)$`).FindStringSubmatch(lines[0])
			deleted := `^EVENT_KIND_ACCOUNT_DELETED accounts/` + watched + ` by callerKeys/bootstrap-admin \(resume token \S+\)$`
			if linked == nil || !regexp.MustCompile(deleted).MatchString(lines[1]) {
				t.Fatalf("the watcher printed:\n%s", strings.Join(lines, "\n"))
			}
			if again := watchExample(t, dir, r.addr, r.bootstrapKey, linked[1], append(ex.watch, "1"), nil); !regexp.MustCompile(deleted).MatchString(again[0]) {
				t.Fatalf("the watcher resumed after the link printed:\n%s", strings.Join(again, "\n"))
			}

			// The webhook receiver checks a real delivery's signature and
			// prints its event; it refuses a forged one.
			hookAddr := freePort(t)
			hooked := "hooked-" + ex.lang
			hook, err := credbrokerv1.NewWebhookServiceClient(adminConn).CreateWebhook(context.Background(), &credbrokerv1.CreateWebhookRequest{
				WebhookId: "receiver-" + ex.lang, Webhook: &credbrokerv1.Webhook{
					Url: "http://" + hookAddr + "/hook", Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_ACCOUNT_LINKED}, Accounts: []string{"accounts/" + hooked},
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			lines = runExample(t, dir, []string{"CREDBROKER_WEBHOOK_SECRET=" + hook.GetSigningSecret()}, append(ex.receive, hookAddr[strings.LastIndex(hookAddr, ":")+1:], "1"), "listening", func() {
				forged, err := http.Post("http://"+hookAddr+"/hook", "application/json", strings.NewReader(`{"id":"forged","kind":"EVENT_KIND_ACCOUNT_DELETED"}`))
				if err != nil || forged.StatusCode != http.StatusUnauthorized {
					t.Errorf("a forged delivery: %v %v", forged, err)
				}
				if _, err := accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{AccountId: hooked, Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{
					JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US},
				}}); err != nil {
					t.Fatal(err)
				}
			})
			if !regexp.MustCompile(`^EVENT_KIND_ACCOUNT_LINKED accounts/` + hooked + ` \(event [0-9a-f]{32}\)$`).MatchString(lines[0]) {
				t.Fatalf("the webhook receiver printed:\n%s", strings.Join(lines, "\n"))
			}

			// Given two replicas, one of which answers UNAVAILABLE, the
			// example gets its token from the other.
			down := startUnavailableReplica(t)
			addr = down.addr + "," + r.addr
			for range 4 {
				if out, err := run(serviceKey, "", append(ex.get, "accounts/"+id)...); err != nil || !strings.HasPrefix(out, "accounts/"+id+": Bearer token") {
					t.Fatalf("token example given two replicas, one down: %v\n%s", err, out)
				}
			}
			if down.calls.Load() == 0 {
				t.Error("no call reached the replica that answers UNAVAILABLE: the retry was not tested")
			}
		})
	}
}

// watchExample runs a watcher example (its last argument the number of
// events to print) with the caller key and resume token given, calls
// change once it says it is watching, and returns the lines it printed
// after that, once it has exited.
func watchExample(t *testing.T, dir, addr, key, resume string, args []string, change func()) []string {
	t.Helper()
	return runExample(t, dir, []string{"CREDBROKER_ADDR=" + addr, "CREDBROKER_CALLER_KEY=" + key, "CREDBROKER_RESUME_TOKEN=" + resume}, args, "watching", change)
}

// runExample runs an example that ends by itself with env added to this
// process's, calls change once it prints ready, and returns the lines it
// printed after that, once it has exited.
func runExample(t *testing.T, dir string, env, args []string, ready string, change func()) []string {
	t.Helper()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "PYTHONPATH=.", "PYTHONDONTWRITEBYTECODE=1"), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill() })
	defer timer.Stop()
	scanner := bufio.NewScanner(out)
	if !scanner.Scan() || scanner.Text() != ready {
		cmd.Wait()
		t.Fatalf("%s did not say %q: %q\n%s", strings.Join(args, " "), ready, scanner.Text(), stderr.String())
	}
	if change != nil {
		change()
	}
	var lines []string
	for scanner.Scan() {
		lines = append(lines, scanner.Text())
	}
	if err := cmd.Wait(); err != nil || len(lines) == 0 {
		t.Fatalf("%s: %v\n%s\n%s", strings.Join(args, " "), err, strings.Join(lines, "\n"), stderr.String())
	}
	return lines
}

// unavailableReplica answers every GetToken with UNAVAILABLE, as a replica
// cut off from its storage does.
type unavailableReplica struct {
	credbrokerv1.UnimplementedTokenServiceServer
	addr  string
	calls atomic.Int32
}

func (u *unavailableReplica) GetToken(context.Context, *credbrokerv1.GetTokenRequest) (*credbrokerv1.GetTokenResponse, error) {
	u.calls.Add(1)
	return nil, status.Error(codes.Unavailable, "this replica cannot reach its storage")
}

func startUnavailableReplica(t *testing.T) *unavailableReplica {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &unavailableReplica{addr: l.Addr().String()}
	s := grpc.NewServer()
	credbrokerv1.RegisterTokenServiceServer(s, u)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return u
}
