package main

import (
	"bufio"
	"bytes"
	"context"
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
	"google.golang.org/grpc/credentials/insecure"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const (
	e2eClientSecret = "e2e-canary-secret-0c7d"
	e2eMasterKey    = "3q2+796tvu/erb7v3q2+796tvu/erb7v3q2+796tvu8="
)

// TestEndToEnd drives the real binary: link an account against the fake,
// get a token, restart, and get the same token without asking upstream.
func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := buildBinary(t)
	fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
	jc := httptest.NewServer(fake)
	defer jc.Close()
	dataDir := filepath.Join(dir, "data")
	var logs bytes.Buffer

	first := startBinary(t, bin, &logs, "--data-dir", dataDir, "--jumpcloud-token-url-us", jc.URL+jumpcloudfake.TokenPath)
	ctx := context.Background()
	_, err := first.accounts.CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: "acme",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := first.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if err != nil || tok.GetAccessToken() != fake.LastToken() || tok.GetApiBaseUrl() != "https://console.jumpcloud.com/api" {
		t.Fatalf("GetToken: err %v, matches the fake's token %v, api_base_url %q", err, tok.GetAccessToken() == fake.LastToken(), tok.GetApiBaseUrl())
	}
	first.stop(t)

	second := startBinary(t, bin, &logs, "--data-dir", dataDir, "--jumpcloud-token-url-us", jc.URL+jumpcloudfake.TokenPath)
	again, err := second.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	if err != nil || again.GetAccessToken() != tok.GetAccessToken() {
		t.Fatalf("after restart: err %v; want the same token as before the restart", err)
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("fake saw %d requests, want 1 (the restart must reuse the stored token)", n)
	}
	second.stop(t)

	out := logs.String()
	if !strings.Contains(out, "credbroker listening") || !strings.Contains(out, `"msg":"stopped"`) {
		t.Fatalf("logs lack start or clean stop:\n%s", out)
	}
	for _, canary := range []string{e2eClientSecret, tok.GetAccessToken(), e2eMasterKey} {
		if strings.Contains(out, canary) {
			t.Fatalf("logs contain a secret")
		}
	}
}

var build struct {
	once sync.Once
	path string
	err  error
}

// buildBinary builds credbroker once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "credbroker-e2e")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "credbroker")
		if out, err := exec.Command("go", "build", "-o", build.path, ".").CombinedOutput(); err != nil {
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
// accounts are being linked: every account whose CreateAccount returned OK
// is there after a restart, with its token, and the store opens cleanly.
func TestKillLosesNothingAcknowledged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildBinary(t)
	fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
	jc := httptest.NewServer(fake)
	defer jc.Close()
	dataDir := filepath.Join(t.TempDir(), "data")
	var logs bytes.Buffer
	args := []string{"--data-dir", dataDir, "--jumpcloud-token-url-us", jc.URL + jumpcloudfake.TokenPath}
	first := startBinary(t, bin, &logs, args...)

	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
	)
	killed := make(chan struct{})
	var killOnce sync.Once
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("acct-%d-%d", w, i)
				_, err := first.accounts.CreateAccount(context.Background(), &credbrokerv1.CreateAccountRequest{
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
	first.conn.Close()

	second := startBinary(t, bin, &logs, args...)
	requests := fake.Requests()
	for _, id := range acked {
		if _, err := second.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/" + id}); err != nil {
			t.Fatalf("acknowledged account %s after SIGKILL: %v", id, err)
		}
	}
	if fake.Requests() != requests {
		t.Fatalf("tokens of acknowledged accounts were lost: %d new upstream requests", fake.Requests()-requests)
	}
	t.Logf("%d accounts acknowledged before SIGKILL, all present after restart", len(acked))
	second.stop(t)
}

type runningBinary struct {
	cmd      *exec.Cmd
	conn     *grpc.ClientConn
	accounts credbrokerv1.AccountServiceClient
	tokens   credbrokerv1.TokenServiceClient
	done     chan struct{}
}

// startBinary runs `credbroker serve` on a free loopback port and waits
// until it says where it listens.
func startBinary(t *testing.T, bin string, logs io.Writer, args ...string) *runningBinary {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"serve", "--listen", "127.0.0.1:0", "--log-format", "json"}, args...)...)
	cmd.Env = append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey)
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
			if json.Unmarshal(line, &entry) == nil && entry.Msg == "credbroker listening" {
				once.Do(func() { addr <- entry.Addr })
			}
		}
		once.Do(func() { close(addr) })
	}()
	a, ok := <-addr
	if !ok {
		t.Fatalf("credbroker exited before listening: %v", cmd.Wait())
	}
	conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	r.conn = conn
	r.accounts = credbrokerv1.NewAccountServiceClient(conn)
	r.tokens = credbrokerv1.NewTokenServiceClient(conn)
	return r
}

// stop sends SIGTERM and expects a clean exit.
func (r *runningBinary) stop(t *testing.T) {
	t.Helper()
	r.conn.Close()
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
		"CREDBROKER_UPSTREAM_TIMEOUT", "CREDBROKER_REFRESH_MARGIN", "default 127.0.0.1:50051"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("serve --help does not mention %s", want)
		}
	}
}

func TestEnvironmentSetsFlagsAndFlagsWin(t *testing.T) {
	t.Setenv("CREDBROKER_LISTEN", "0.0.0.0:1")
	var out bytes.Buffer
	if code := run([]string{"serve"}, &out, &out); code != 1 || !strings.Contains(out.String(), `"0.0.0.0:1" is not a loopback address`) {
		t.Fatalf("env not applied: exit %d, %s", code, out.String())
	}
	// A flag beats its variable: the listen address passes, and start-up
	// gets as far as the (impossible) data directory.
	out.Reset()
	if code := run([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", "/dev/null/data"}, &out, &out); code != 1 || !strings.Contains(out.String(), "data directory") {
		t.Fatalf("flag did not win over the environment: exit %d, %s", code, out.String())
	}
	out.Reset()
	t.Setenv("CREDBROKER_UPSTREAM_TIMEOUT", "soon")
	if code := run([]string{"serve"}, &out, &out); code != 1 || !strings.Contains(out.String(), "CREDBROKER_UPSTREAM_TIMEOUT") {
		t.Fatalf("bad env value not reported: exit %d, %s", code, out.String())
	}
}
