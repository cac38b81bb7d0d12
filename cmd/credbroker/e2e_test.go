package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const (
	e2eClientSecret = "e2e-canary-secret-0c7d"
	e2eMasterKey    = "3q2+796tvu/erb7v3q2+796tvu/erb7v3q2+796tvu8="
)

// e2eAuth is one way of proving identities to the real binary: the flags
// it is started with, and how the admin and the service connect.
type e2eAuth struct {
	name       string
	serverArgs func(dir string) []string
	// setUp returns how the admin and the service connect, and the
	// service's principal.
	setUp func(t *testing.T, r *runningBinary, dir string) (admin, service []grpc.DialOption, principal string)
}

var e2eAuths = []e2eAuth{
	{
		name:       "caller keys",
		serverArgs: func(string) []string { return nil },
		setUp: func(t *testing.T, r *runningBinary, _ string) ([]grpc.DialOption, []grpc.DialOption, string) {
			if !strings.HasPrefix(r.bootstrapKey, "cbk_") {
				t.Fatalf("no bootstrap admin key on standard output")
			}
			admin := keyCreds(r.bootstrapKey)
			resp, err := credbrokerv1.NewCallerServiceClient(r.connect(t, admin...)).CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{
				KeyId: "billing", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER},
			})
			if err != nil {
				t.Fatal(err)
			}
			return admin, keyCreds(resp.GetKey()), "callerKeys/billing"
		},
	},
	{
		name: "mTLS",
		serverArgs: func(dir string) []string {
			return []string{"--tls-cert", dir + "/server.pem", "--tls-key", dir + "/server-key.pem", "--client-ca", dir + "/ca.pem",
				"--bootstrap-admin-principal", "spiffe://credbroker.test/admin"}
		},
		setUp: func(t *testing.T, r *runningBinary, dir string) ([]grpc.DialOption, []grpc.DialOption, string) {
			if r.bootstrapKey != "" {
				t.Fatal("a bootstrap key was made although a bootstrap principal was given")
			}
			return certCreds(t, dir, "admin"), certCreds(t, dir, "billing"), "spiffe://credbroker.test/billing"
		},
	},
}

// keyCreds send a caller key over loopback plaintext.
func keyCreds(key string) []grpc.DialOption {
	return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(client.CallerKey(key))}
}

// certCreds are TLS credentials that trust the dev CA in dir and present
// the client certificate name.pem.
func certCreds(t *testing.T, dir, name string) []grpc.DialOption {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca)
	return []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}))}
}

// TestEndToEnd drives the real binary, once with caller keys and once with
// mTLS: link an account, grant the service, get a token, restart, and get
// the same token without asking upstream; the audit trail has it all.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	for _, auth := range e2eAuths {
		t.Run(auth.name, func(t *testing.T) {
			dir := t.TempDir()
			if out, err := exec.Command(bin, "dev-certs", "--dir", dir).CombinedOutput(); err != nil {
				t.Fatalf("dev-certs: %v\n%s", err, out)
			}
			fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
			jc := httptest.NewServer(fake)
			defer jc.Close()
			dataDir := filepath.Join(dir, "data")
			var logs bytes.Buffer
			args := append([]string{"--data-dir", dataDir, "--jumpcloud-token-url-us", jc.URL + jumpcloudfake.TokenPath}, auth.serverArgs(dir)...)

			first := startBinary(t, bin, &logs, args...)
			adminCreds, serviceCreds, principal := auth.setUp(t, first, dir)
			ctx := context.Background()
			accounts := credbrokerv1.NewAccountServiceClient(first.connect(t, adminCreds...))
			_, err := accounts.CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
				AccountId: "acme",
				Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
					ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
				}},
			})
			if err != nil {
				t.Fatal(err)
			}
			tokens := credbrokerv1.NewTokenServiceClient(first.connect(t, serviceCreds...))
			if _, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("GetToken before the grant: %v", err)
			}
			if _, err := accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: principal}); err != nil {
				t.Fatal(err)
			}
			tok, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if err != nil || tok.GetAccessToken() != fake.LastToken() || tok.GetApiBaseUrl() != "https://console.jumpcloud.com/api" {
				t.Fatalf("GetToken: err %v, matches the fake's token %v, api_base_url %q", err, tok.GetAccessToken() == fake.LastToken(), tok.GetApiBaseUrl())
			}
			first.stop(t)

			second := startBinary(t, bin, &logs, args...)
			again, err := credbrokerv1.NewTokenServiceClient(second.connect(t, serviceCreds...)).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if err != nil || again.GetAccessToken() != tok.GetAccessToken() {
				t.Fatalf("after restart: err %v; want the same token as before the restart", err)
			}
			if n := fake.Requests(); n != 1 {
				t.Fatalf("fake saw %d requests, want 1 (the restart must reuse the stored token)", n)
			}
			events, err := credbrokerv1.NewAuditServiceClient(second.connect(t, adminCreds...)).ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Principal: principal})
			if err != nil {
				t.Fatal(err)
			}
			var codes []string
			for _, e := range events.GetEvents() {
				codes = append(codes, e.GetCode())
			}
			if strings.Join(codes, ",") != "OK,OK,PERMISSION_DENIED" {
				t.Fatalf("audit events of %s, newest first: %v", principal, codes)
			}
			second.stop(t)

			out := logs.String()
			if !strings.Contains(out, "credbroker listening") || !strings.Contains(out, `"msg":"stopped"`) {
				t.Fatalf("logs lack start or clean stop:\n%s", out)
			}
			for _, canary := range []string{e2eClientSecret, tok.GetAccessToken(), e2eMasterKey, first.bootstrapKey} {
				if canary != "" && strings.Contains(out, canary) {
					t.Fatalf("logs contain a secret")
				}
			}
		})
	}
}

var build struct {
	once sync.Once
	path string
	err  error
}

// buildBinary builds credbroker once per test run, with the commit it is
// built from (whatever GOFLAGS says), as `go build` does by default.
func buildBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "credbroker-e2e")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "credbroker")
		if out, err := exec.Command("go", "build", "-buildvcs=auto", "-o", build.path, ".").CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.path != "" {
		os.RemoveAll(filepath.Dir(build.path))
	}
	os.Exit(code)
}

// TestKillLosesNothingAcknowledged kills the broker with SIGKILL while
// accounts are being linked and tokens served: every account whose
// CreateAccount returned OK is there after a restart, with its token, the
// store opens cleanly, and every token served has its audit event (from
// the audit journal, on bbolt).
func TestKillLosesNothingAcknowledged(t *testing.T) {
	e := newE2ESetup(t)
	bin, fake, args, logs := e.bin, e.fake, e.args, &e.logs
	first := startBinary(t, bin, logs, args...)
	admin := keyCreds(first.bootstrapKey)
	firstConn := first.connect(t, admin...)
	firstAccounts := credbrokerv1.NewAccountServiceClient(firstConn)
	checker := createCheckerKey(t, firstConn)
	if _, err := firstAccounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
		AccountId: "served",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
		}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := firstAccounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/served", Principal: "callerKeys/checker"}); err != nil {
		t.Fatal(err)
	}
	firstTokens := credbrokerv1.NewTokenServiceClient(first.connect(t, keyCreds(checker)...))

	var (
		mu     sync.Mutex
		acked  []string
		served int
		wg     sync.WaitGroup
	)
	killed := make(chan struct{})
	var killOnce sync.Once
	for range 8 {
		wg.Go(func() {
			for {
				if _, err := firstTokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/served"}); err != nil {
					return // the broker is gone
				}
				mu.Lock()
				served++
				mu.Unlock()
			}
		})
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("acct-%d-%d", w, i)
				_, err := firstAccounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
					AccountId: id,
					Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
						ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
					}},
				})
				if err != nil {
					return // the broker is gone
				}
				mu.Lock()
				acked = append(acked, id)
				n := len(acked)
				mu.Unlock()
				if n == 40 {
					killOnce.Do(func() {
						_ = first.cmd.Process.Kill()
						close(killed)
					})
				}
			}
		}()
	}
	<-killed
	wg.Wait()
	<-first.done
	_ = first.cmd.Wait()

	second := startBinary(t, bin, logs, args...)
	adminConn := second.connect(t, admin...)
	accounts := credbrokerv1.NewAccountServiceClient(adminConn)
	tokens := credbrokerv1.NewTokenServiceClient(second.connect(t, keyCreds(checker)...))
	// Each acknowledged call had its audit event on disk before the answer.
	audited, tokenEvents := map[string]bool{}, 0
	for req := (&credbrokerv1.ListAuditEventsRequest{PageSize: 1000}); ; {
		events, err := credbrokerv1.NewAuditServiceClient(adminConn).ListAuditEvents(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range events.GetEvents() {
			switch {
			case e.GetMethod() == "/credbroker.v1.AccountService/CreateAccount" && e.GetCode() == "OK":
				audited[e.GetResource()] = true
			case e.GetMethod() == "/credbroker.v1.TokenService/GetToken" && e.GetCode() == "OK":
				tokenEvents++
			}
		}
		if req.PageToken = events.GetNextPageToken(); req.PageToken == "" {
			break
		}
	}
	if served == 0 || tokenEvents < served {
		t.Errorf("%d tokens served before SIGKILL, %d audit events of them after it", served, tokenEvents)
	}
	requests := fake.Requests()
	for _, id := range acked {
		if !audited["accounts/"+id] {
			t.Errorf("acknowledged account %s has no audit event after SIGKILL", id)
		}
		if _, err := accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/" + id, Principal: "callerKeys/checker"}); err != nil {
			t.Fatalf("acknowledged account %s after SIGKILL: %v", id, err)
		}
		if _, err := tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/" + id}); err != nil {
			t.Fatalf("token of acknowledged account %s after SIGKILL: %v", id, err)
		}
	}
	if fake.Requests() != requests {
		t.Fatalf("tokens of acknowledged accounts were lost: %d new upstream requests", fake.Requests()-requests)
	}
	t.Logf("%d accounts acknowledged and %d tokens served before SIGKILL, all present and audited after restart (%d token events)", len(acked), served, tokenEvents)
	second.stop(t)
}

// e2eSetup is the built binary, a JumpCloud fake and an empty data directory.
type e2eSetup struct {
	bin     string
	fake    *jumpcloudfake.Fake
	dataDir string
	fakeURL string
	// args point serve at the data directory and the fake, with extra args.
	args []string
	logs bytes.Buffer
}

func newE2ESetup(t *testing.T, extraArgs ...string) *e2eSetup {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the binary")
	}
	e := &e2eSetup{bin: buildBinary(t), fake: jumpcloudfake.New("e2e-client", e2eClientSecret), dataDir: filepath.Join(t.TempDir(), "data")}
	jc := httptest.NewServer(e.fake)
	t.Cleanup(jc.Close)
	e.fakeURL = jc.URL
	e.args = append([]string{"--data-dir", e.dataDir, "--jumpcloud-token-url-us", jc.URL + jumpcloudfake.TokenPath,
		"--jumpcloud-api-url-us", jc.URL + jumpcloudfake.APIPath}, extraArgs...)
	return e
}

// createCheckerKey creates the caller key callerKeys/checker and returns it.
func createCheckerKey(t *testing.T, adminConn *grpc.ClientConn) string {
	t.Helper()
	key, err := credbrokerv1.NewCallerServiceClient(adminConn).CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{
		KeyId: "checker", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER},
	})
	if err != nil {
		t.Fatal(err)
	}
	return key.GetKey()
}

type runningBinary struct {
	cmd                               *exec.Cmd
	addr, proxyAddr, hubAddr, opsAddr string
	// bootstrapKey is the admin key printed on the first start, if any.
	bootstrapKey string
	done         chan struct{}
}

// startBinary runs `credbroker serve` on a free loopback port and waits
// until it says where it listens.
func startBinary(t *testing.T, bin string, logs io.Writer, args ...string) *runningBinary {
	t.Helper()
	return startBinaryWithKey(t, bin, e2eMasterKey, logs, args...)
}

func startBinaryWithKey(t *testing.T, bin, masterKey string, logs io.Writer, args ...string) *runningBinary {
	t.Helper()
	cmd := exec.Command(bin, append(serveOnFreePorts, args...)...)
	cmd.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+masterKey)
	return startServe(t, cmd, logs)
}

// serveOnFreePorts starts `credbroker serve` on free loopback ports, logging
// in JSON (from which startServe learns the ports).
var serveOnFreePorts = []string{"serve", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0", "--log-format", "json"}

// startServe starts cmd, a `credbroker serve...` of serveOnFreePorts, and
// waits until it says where it listens.
func startServe(t *testing.T, cmd *exec.Cmd, logs io.Writer) *runningBinary {
	t.Helper()
	// A file, not a pipe: the child writes the bootstrap key into it before
	// it logs that it listens, so the key is there once that line is read.
	stdout, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	cmd.Stdout = stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r := &runningBinary{cmd: cmd, done: make(chan struct{})}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-r.done
	})

	addr := make(chan string, 1)
	var once sync.Once
	go func() {
		defer close(r.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logs.Write(append(line, '\n'))
			var entry struct{ Msg, Addr string }
			if json.Unmarshal(line, &entry) == nil && entry.Msg == "egress proxy listening" {
				r.proxyAddr = entry.Addr // logged before the line below
			}
			if json.Unmarshal(line, &entry) == nil && entry.Msg == "hub listening" {
				r.hubAddr = entry.Addr
			}
			if json.Unmarshal(line, &entry) == nil && entry.Msg == "ops listener listening" {
				r.opsAddr = entry.Addr
			}
			if json.Unmarshal(line, &entry) == nil && entry.Msg == "credbroker listening" {
				once.Do(func() { addr <- entry.Addr })
			}
		}
		once.Do(func() { close(addr) })
	}()
	a, ok := <-addr
	if !ok {
		t.Fatalf("credbroker exited before listening: %v\n%s", cmd.Wait(), logs)
	}
	r.addr = a
	printed, err := os.ReadFile(stdout.Name())
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(printed), "\n") {
		if k := strings.TrimSpace(line); strings.HasPrefix(k, "cbk_") {
			r.bootstrapKey = k
		}
	}
	return r
}

// connect dials the broker; the test closes the connection.
func (r *runningBinary) connect(t *testing.T, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(r.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// stop sends SIGTERM and expects a clean exit.
func (r *runningBinary) stop(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-r.done
	if err := r.cmd.Wait(); err != nil {
		t.Fatalf("credbroker did not exit cleanly on SIGTERM: %v", err)
	}
}

func TestServeHelpDocumentsEveryFlagsEnvironmentVariable(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"serve", "--help"}, &out, &out); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"CREDBROKER_LISTEN", "CREDBROKER_DATA_DIR", "CREDBROKER_MASTER_KEY_FILE", "CREDBROKER_MASTER_KEY",
		"CREDBROKER_JUMPCLOUD_TOKEN_URL_US", "CREDBROKER_JUMPCLOUD_TOKEN_URL_EU", "CREDBROKER_JUMPCLOUD_API_URL_US", "CREDBROKER_JUMPCLOUD_API_URL_EU",
		"CREDBROKER_UPSTREAM_TIMEOUT", "CREDBROKER_REFRESH_MARGIN", "default 127.0.0.1:50051",
		"CREDBROKER_TLS_CERT", "CREDBROKER_TLS_KEY", "CREDBROKER_CLIENT_CA", "CREDBROKER_BOOTSTRAP_ADMIN_PRINCIPAL",
		"CREDBROKER_RATE_LIMIT", "CREDBROKER_RATE_BURST", "CREDBROKER_AUDIT_MAX_AGE", "CREDBROKER_AUDIT_MAX_EVENTS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("serve --help does not mention %s", want)
		}
	}
}

func TestEnvironmentSetsFlagsAndFlagsWin(t *testing.T) {
	t.Setenv("CREDBROKER_LISTEN", "0.0.0.0:1")
	var out bytes.Buffer
	if code := run([]string{"serve"}, &out, &out); code != 2 || !strings.Contains(out.String(), `"0.0.0.0:1" is not a loopback address`) {
		t.Fatalf("env not applied: exit %d, %s", code, out.String())
	}
	// A flag beats its variable: the listen address passes, and start-up
	// gets as far as the (impossible) data directory.
	out.Reset()
	if code := run([]string{"serve", "--listen", "127.0.0.1:0", "--proxy-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--hub-listen", "127.0.0.1:0", "--data-dir", "/dev/null/data"}, &out, &out); code != 1 || !strings.Contains(out.String(), "data directory") {
		t.Fatalf("flag did not win over the environment: exit %d, %s", code, out.String())
	}
	out.Reset()
	t.Setenv("CREDBROKER_UPSTREAM_TIMEOUT", "soon")
	if code := run([]string{"serve"}, &out, &out); code != 2 || !strings.Contains(out.String(), "CREDBROKER_UPSTREAM_TIMEOUT") {
		t.Fatalf("bad env value not reported: exit %d, %s", code, out.String())
	}
}
