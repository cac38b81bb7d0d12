package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/devetcd/etcdtest"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

// tokenRequests records when the fake's token endpoint was asked.
type tokenRequests struct {
	mu    sync.Mutex
	times []time.Time
}

func (r *tokenRequests) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == jumpcloudfake.TokenPath {
			r.mu.Lock()
			r.times = append(r.times, time.Now())
			r.mu.Unlock()
		}
		h.ServeHTTP(w, req)
	})
}

func (r *tokenRequests) all() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]time.Time(nil), r.times...)
}

// freePort is a loopback address no one listens on, so that a replica
// restarts where its clients look for it.
func freePort(t *testing.T) string { return etcdtest.FreeAddr(t) }

// loadStats counts a load's calls.
type loadStats struct{ ok, failed atomic.Int64 }

// TestClusterFailover runs 3 replicas of the real binary on a 3-member
// etcd cluster under continuous GetToken and egress-proxy load, from a Go
// client given the three addresses, and kills a replica (SIGKILL), then
// an etcd member (SIGKILL too), then restarts both. No call fails, no acknowledged write
// is lost, every acknowledged GetToken has its audit event, and the
// provider never sees two token requests for one token's lifetime.
func TestClusterFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx := context.Background()
	bin := buildBinary(t)
	fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
	fake.SetTokenTTL(36 * time.Second) // 6 s after JumpCloud's 30 s margin: renewed every 2 to 3 s
	var requests tokenRequests
	jc := httptest.NewServer(requests.wrap(fake))
	defer jc.Close()
	cluster := etcdtest.StartProcesses(t, bin, 3)

	replicas := make([]*clusterReplica, 3)
	for i := range replicas {
		r := &clusterReplica{addr: freePort(t), prox: freePort(t), logs: &lockedWriter{w: &bytes.Buffer{}}}
		r.args = []string{"--storage", "etcd", "--etcd-endpoints", strings.Join(cluster.Endpoints(), ","), "--etcd-lock-ttl", "2s", "--rate-limit", "-1",
			"--data-dir", filepath.Join(t.TempDir(), "data"), "--listen", r.addr, "--proxy-listen", r.prox,
			"--jumpcloud-token-url-us", jc.URL + jumpcloudfake.TokenPath, "--jumpcloud-api-url-us", jc.URL + jumpcloudfake.APIPath}
		r.run = startBinary(t, bin, r.logs, r.args...)
		replicas[i] = r
	}
	// A failure shows the end of each replica's log, then the failures
	// again, so that they are in the last lines of a long test run.
	var problems []string
	errorf := func(format string, args ...any) {
		t.Helper()
		problems = append(problems, fmt.Sprintf(format, args...))
		t.Error(problems[len(problems)-1])
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, r := range replicas {
				t.Logf("replica %d's log, its last lines other than answered requests:\n%s", i, unansweredTail(r.logs.String(), 15))
			}
			if len(problems) == 0 {
				problems = []string{"see the first failure above"}
			}
			t.Logf("TestClusterFailover failed: %s", strings.Join(problems[:min(len(problems), 5)], "; "))
		}
	})
	adminKey := replicas[0].run.bootstrapKey
	admins := make([]credbrokerv1.CallerServiceClient, 3)
	for i, r := range replicas {
		admins[i] = credbrokerv1.NewCallerServiceClient(r.run.connect(t, keyCreds(adminKey)...))
	}
	adminConn := replicas[0].run.connect(t, keyCreds(adminKey)...)
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: "acme",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
		}},
	}); err != nil {
		t.Fatal(err)
	}
	svc, err := admins[0].CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: "svc", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/svc"}); err != nil {
		t.Fatal(err)
	}
	c, err := client.New(replicas[0].addr+","+replicas[1].addr+","+replicas[2].addr, client.WithCallerKey(svc.GetKey()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tokens := credbrokerv1.NewTokenServiceClient(c.Conn())
	// Every replica has the account and the key before the load starts.
	for _, r := range replicas {
		conn := r.run.connect(t, keyCreds(svc.GetKey())...)
		waitUntil(t, 10*time.Second, func() error {
			_, err := credbrokerv1.NewTokenServiceClient(conn).GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			return err
		})
	}
	// An admin watches the keys being created on replica 2, which is
	// killed: the Go client resumes the watch once it is back.
	watcher, err := client.New(replicas[2].addr, client.WithCallerKey(adminKey))
	if err != nil {
		t.Fatal(err)
	}
	defer watcher.Close()
	var watchMu sync.Mutex
	created, watched := map[string]int{}, map[string]bool{} // events by key id; event ids
	var twice []string
	watchCtx, stopWatching := context.WithCancel(ctx)
	watchEnded := make(chan error, 1)
	go func() {
		watchEnded <- watcher.WatchEvents(watchCtx, &credbrokerv1.WatchEventsRequest{Kinds: []credbrokerv1.EventKind{credbrokerv1.EventKind_EVENT_KIND_CALLER_KEY_CREATED}},
			func(e *credbrokerv1.Event, _ string) error {
				if e == nil {
					return nil
				}
				watchMu.Lock()
				defer watchMu.Unlock()
				if watched[e.GetId()] {
					twice = append(twice, e.GetId())
				}
				watched[e.GetId()] = true
				created[strings.TrimPrefix(e.GetCallerKey(), "callerKeys/")]++
				return nil
			})
	}()
	seen := func(id string) error {
		watchMu.Lock()
		defer watchMu.Unlock()
		if created[id] == 0 {
			return fmt.Errorf("no event of caller key %s's creation", id)
		}
		return nil
	}
	// The watch is in place once it sees a key made after it started.
	waitUntil(t, 20*time.Second, func() error {
		if _, err := admins[0].CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: fmt.Sprintf("marker-%d", time.Now().UnixNano()), CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}}); err != nil {
			return err
		}
		watchMu.Lock()
		defer watchMu.Unlock()
		if len(created) == 0 {
			return errors.New("the watch saw no key created")
		}
		return nil
	})
	start := time.Now()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var getToken, proxied loadStats
	var firstErrs sync.Map
	for w := range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				_, err := tokens.GetToken(cctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
				cancel()
				if err != nil {
					getToken.failed.Add(1)
					firstErrs.LoadOrStore("GetToken", err)
				} else {
					getToken.ok.Add(1)
				}
				time.Sleep(time.Duration(w) * time.Millisecond)
			}
		})
	}
	for w := range 2 {
		wg.Go(func() {
			hc := &http.Client{Timeout: 10 * time.Second}
			for n := w; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if err := proxyGet(hc, []string{replicas[0].prox, replicas[1].prox, replicas[2].prox}, n, svc.GetKey()); err != nil {
					proxied.failed.Add(1)
					firstErrs.LoadOrStore("proxy", err)
				} else {
					proxied.ok.Add(1)
				}
			}
		})
	}
	// Writes go round robin too; those acknowledged must all be there.
	var acked []string
	wg.Go(func() {
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			id := fmt.Sprintf("w-%d", n)
			if _, err := admins[n%3].CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: id, CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}}); err == nil {
				acked = append(acked, id)
			}
		}
	})

	step := func(what string, do func()) {
		time.Sleep(3 * time.Second)
		t.Logf("%5.1fs %s (so far GetToken %d ok %d failed, proxy %d ok %d failed)", time.Since(start).Seconds(), what,
			getToken.ok.Load(), getToken.failed.Load(), proxied.ok.Load(), proxied.failed.Load())
		do()
	}
	step("SIGKILL replica 2", func() { _ = replicas[2].run.cmd.Process.Kill(); <-replicas[2].run.done })
	step("stop etcd member 0", func() { cluster.Stop(0) })
	step("restart replica 2", func() { replicas[2].run = startBinary(t, bin, replicas[2].logs, replicas[2].args...) })
	step("restart etcd member 0", func() { cluster.Restart(0) })
	step("stop the load", func() { close(stop) })
	wg.Wait()

	firstErrs.Range(func(k, v any) bool { errorf("first failed %s: %v", k, v); return true })
	if n := getToken.failed.Load() + proxied.failed.Load(); n > 0 {
		errorf("%d GetToken and %d proxied calls failed", getToken.failed.Load(), proxied.failed.Load())
	}
	if getToken.ok.Load() == 0 || proxied.ok.Load() == 0 {
		t.Fatalf("no load: %d GetToken, %d proxied", getToken.ok.Load(), proxied.ok.Load())
	}

	// Every acknowledged write is there.
	stored := map[string]bool{}
	for page := ""; ; {
		resp, err := admins[1].ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{PageSize: 1000, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range resp.GetCallerKeys() {
			stored[strings.TrimPrefix(k.GetName(), "callerKeys/")] = true
		}
		if page = resp.GetNextPageToken(); page == "" {
			break
		}
	}
	for _, id := range acked {
		if !stored[id] {
			errorf("acknowledged caller key %s is lost", id)
		}
	}

	// The watch saw each acknowledged key's creation once, across its
	// replica's death and the stopped member.
	for _, id := range acked {
		waitUntil(t, 30*time.Second, func() error { return seen(id) })
	}
	stopWatching()
	if err := <-watchEnded; !errors.Is(err, context.Canceled) {
		errorf("the watch ended with %v", err)
	}
	watchMu.Lock()
	for id, n := range created {
		if n > 1 {
			errorf("caller key %s's creation came %d times", id, n)
		}
	}
	if len(twice) > 0 {
		errorf("events that came twice: %v", twice)
	}
	watchMu.Unlock()

	// Every acknowledged GetToken has its audit event, whichever replica
	// wrote it.
	events, proxyEvents := 0, 0
	audit := credbrokerv1.NewAuditServiceClient(adminConn)
	for page := ""; ; {
		resp, err := audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{Principal: "callerKeys/svc", PageSize: 1000, PageToken: page})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.GetEvents() {
			switch {
			case ev.GetCode() != "OK":
			case strings.HasSuffix(ev.GetMethod(), "/GetToken"):
				events++
			case ev.GetMethod() == "proxy":
				proxyEvents++
			}
		}
		if page = resp.GetNextPageToken(); page == "" {
			break
		}
	}
	if events < int(getToken.ok.Load()) {
		errorf("%d GetToken calls acknowledged, %d audit events of them", getToken.ok.Load(), events)
	}
	if proxyEvents < int(proxied.ok.Load()) {
		errorf("%d proxied calls acknowledged, %d audit events of them", proxied.ok.Load(), proxyEvents)
	}

	// One token request per token lifetime: a second request for the same
	// lifetime would come within milliseconds of the first.
	times := requests.all()
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < time.Second {
			errorf("token requests %d and %d came %s apart: two replicas renewed one token", i-1, i, gap)
		}
	}
	t.Logf("%d GetToken and %d proxied calls, all answered; %d acknowledged writes, all kept and watched; %d and %d audit events of them; %d token requests in %s",
		getToken.ok.Load(), proxied.ok.Load(), len(acked), events, proxyEvents, len(times), time.Since(start).Round(time.Second))
}

// clusterReplica is one replica of the binary in TestClusterFailover.
type clusterReplica struct {
	args       []string
	addr, prox string // fixed, so that it restarts where clients look
	run        *runningBinary
	logs       *lockedWriter
}

// proxyGet makes one GET through the egress proxy, trying the proxies in
// turn from the n-th while one cannot answer: a refused or broken
// connection, or 503 (stopping, or cut off from its storage).
func proxyGet(hc *http.Client, proxies []string, n int, key string) error {
	var last error
	for try := range 2 * len(proxies) {
		if try > 0 {
			time.Sleep(time.Duration(try) * 50 * time.Millisecond)
		}
		req, err := http.NewRequest(http.MethodGet, "http://"+proxies[(n+try)%len(proxies)]+"/v1/accounts/acme/proxy/v2/systems", nil)
		if err != nil {
			return err
		}
		req.Header.Set("Proxy-Authorization", "Bearer "+key)
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case err != nil:
			last = err
		case resp.StatusCode == http.StatusServiceUnavailable:
			last = fmt.Errorf("HTTP %d %s", resp.StatusCode, body)
		case resp.StatusCode != http.StatusOK:
			return fmt.Errorf("HTTP %d %s", resp.StatusCode, body)
		default:
			return nil
		}
	}
	return last
}

// waitUntil calls fn until it returns nil, failing the test after limit.
func waitUntil(t *testing.T, limit time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unansweredTail is the last n lines of a log other than requests that
// answered OK, so that a failed run shows what went wrong, not thousands
// of calls.
func unansweredTail(log string, n int) string {
	var kept []string
	for _, line := range strings.Split(strings.TrimSpace(log), "\n") {
		if !strings.Contains(line, `"msg":"request"`) || !strings.Contains(line, `"code":"OK"`) {
			kept = append(kept, line)
		}
	}
	return strings.Join(kept[max(len(kept)-n, 0):], "\n")
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.String()
}

// TestMoveBetweenEngines moves a broker from bbolt to etcd and back with
// backup and restore: its accounts, tokens (served from the restored cache,
// with no new token request), caller keys and audit trail come along, and
// a restore into an etcd prefix that holds a broker is refused. Then it
// moves the cluster to a new master key offline, through bbolt: rekey,
// back up, restore into a new prefix.
func TestMoveBetweenEngines(t *testing.T) {
	e := newE2ESetup(t)
	cluster := etcdtest.Start(t, 1)
	etcdArgs := []string{"--storage", "etcd", "--etcd-endpoints", strings.Join(cluster.Endpoints(), ",")}
	try := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(e.bin, args...)
		cmd.Env = append(append(os.Environ(), "CREDBROKER_MASTER_KEY="+e2eMasterKey), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	run := func(env []string, args ...string) {
		t.Helper()
		if out, err := try(env, args...); err != nil {
			t.Fatalf("credbroker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	dir := t.TempDir()

	onBolt := startBinary(t, e.bin, &e.logs, e.args...)
	admin := onBolt.bootstrapKey
	adminConn := onBolt.connect(t, keyCreds(admin)...)
	checker := createCheckerKey(t, adminConn)
	linkAccounts(t, credbrokerv1.NewAccountServiceClient(adminConn), 5)
	token := func(r *runningBinary) string {
		t.Helper()
		resp, err := credbrokerv1.NewTokenServiceClient(r.connect(t, keyCreds(checker)...)).GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acct-3"})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetAccessToken()
	}
	want, requests := token(onBolt), e.fake.Requests()
	run([]string{"CREDBROKER_CALLER_KEY=" + admin}, "backup", "--broker", onBolt.addr, "--out", dir+"/from-bolt")
	onBolt.stop(t)

	run(nil, append([]string{"restore", "--in", dir + "/from-bolt"}, etcdArgs...)...)
	onEtcd := startBinary(t, e.bin, &e.logs, append(slices.Clone(e.args), etcdArgs...)...)
	if got := token(onEtcd); got != want {
		t.Fatal("the broker on etcd serves another token than the one restored")
	}
	events, err := credbrokerv1.NewAuditServiceClient(onEtcd.connect(t, keyCreds(admin)...)).ListAuditEvents(context.Background(), &credbrokerv1.ListAuditEventsRequest{Account: "accounts/acct-3"})
	if err != nil || len(events.GetEvents()) < 3 { // linked, granted, a token handed out, on bbolt
		t.Fatalf("the audit trail on etcd: %v %v", events, err)
	}
	if out, err := try(nil, append([]string{"restore", "--in", dir + "/from-bolt"}, etcdArgs...)...); err == nil || !strings.Contains(out, "holds a broker") {
		t.Fatalf("a restore into a prefix in use: %v\n%s", err, out)
	}
	run([]string{"CREDBROKER_CALLER_KEY=" + admin}, "backup", "--broker", onEtcd.addr, "--out", dir+"/from-etcd")
	onEtcd.stop(t)

	newDir := filepath.Join(t.TempDir(), "data")
	run(nil, "restore", "--in", dir+"/from-etcd", "--data-dir", newDir)
	args := slices.Clone(e.args)
	args[slices.Index(args, "--data-dir")+1] = newDir
	backOnBolt := startBinary(t, e.bin, &e.logs, args...)
	if got := token(backOnBolt); got != want {
		t.Fatal("the broker back on bbolt serves another token than the one restored")
	}
	backOnBolt.stop(t)

	// The README's way of rotating a cluster's master key while it cannot
	// be done online: through bbolt, into a new prefix.
	newKey := base64.StdEncoding.EncodeToString([]byte("a new master key of 32 bytes....")) // 32 bytes
	if err := os.WriteFile(dir+"/new.key", []byte(newKey), 0o600); err != nil {
		t.Fatal(err)
	}
	run(nil, "rekey", "--data-dir", newDir, "--new-master-key-file", dir+"/new.key")
	rekeyed := startBinaryWithKey(t, e.bin, newKey, &e.logs, args...)
	run([]string{"CREDBROKER_CALLER_KEY=" + admin}, "backup", "--broker", rekeyed.addr, "--out", dir+"/rekeyed")
	rekeyed.stop(t)
	newPrefix := append(slices.Clone(etcdArgs), "--etcd-prefix", "/rekeyed/")
	run([]string{"CREDBROKER_MASTER_KEY=" + newKey}, append([]string{"restore", "--in", dir + "/rekeyed"}, newPrefix...)...)
	onNewKey := startBinaryWithKey(t, e.bin, newKey, &e.logs, append(slices.Clone(e.args), newPrefix...)...)
	if got := token(onNewKey); got != want {
		t.Fatal("the cluster on the new key serves another token than the one restored")
	}
	if n := e.fake.Requests(); n != requests {
		t.Fatalf("%d new token requests: the tokens did not move with the broker", n-requests)
	}
	onNewKey.stop(t)
}

// TestStoppedLockHolderDoesNotWrite stops (SIGSTOP) a replica while its
// token request is out, for longer than its refresh lock's lease: another
// replica takes the lock and stores its own token; the stopped one,
// continued (SIGCONT), gets its answer but does not store it over the
// newer token. (Its request had gone before it stopped, so the provider
// saw two; a replica stopped before asking does not ask once continued:
// server.TestPausedLockHolderDoesNotAsk.)
func TestStoppedLockHolderDoesNotWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx := context.Background()
	bin := buildBinary(t)
	fake := jumpcloudfake.New("e2e-client", e2eClientSecret)
	fake.SetTokenTTL(36 * time.Second) // 6 s after JumpCloud's 30 s margin
	// The fake holds one token request, when told to, until released.
	var hold atomic.Bool
	held, release := make(chan struct{}), make(chan struct{})
	jc := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == jumpcloudfake.TokenPath && hold.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
		fake.ServeHTTP(w, r)
	}))
	defer jc.Close()
	cluster := etcdtest.Start(t, 1)
	var logs [2]*lockedWriter
	var rs [2]*runningBinary
	for i := range rs {
		logs[i] = &lockedWriter{w: &bytes.Buffer{}}
		rs[i] = startBinary(t, bin, logs[i], "--storage", "etcd", "--etcd-endpoints", strings.Join(cluster.Endpoints(), ","),
			"--etcd-lock-ttl", "2s", "--refresh-margin", "100ms", "--data-dir", filepath.Join(t.TempDir(), "data"),
			"--jumpcloud-token-url-us", jc.URL+jumpcloudfake.TokenPath, "--jumpcloud-api-url-us", jc.URL+jumpcloudfake.APIPath)
	}
	adminConn := rs[0].connect(t, keyCreds(rs[0].bootstrapKey)...)
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).CreateAccount(ctx, &credbrokerv1.CreateAccountRequest{
		AccountId: "acme",
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: "e2e-client", ClientSecret: e2eClientSecret, Region: credbrokerv1.Region_REGION_US,
		}},
	}); err != nil {
		t.Fatal(err)
	}
	svc := createCheckerKey(t, adminConn)
	if _, err := credbrokerv1.NewAccountServiceClient(adminConn).AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/checker"}); err != nil {
		t.Fatal(err)
	}
	var tokens [2]credbrokerv1.TokenServiceClient
	for i, r := range rs {
		tokens[i] = credbrokerv1.NewTokenServiceClient(r.connect(t, keyCreds(svc)...))
	}
	// A min_ttl the cached token does not meet makes a replica ask.
	forced := &credbrokerv1.GetTokenRequest{Name: "accounts/acme", MinTtl: durationpb.New(5500 * time.Millisecond)}
	waitUntil(t, 5*time.Second, func() error {
		_, err := tokens[1].GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return err
	})
	time.Sleep(time.Second) // the linked token has less than 5.5 s left

	hold.Store(true)
	go func() { _, _ = tokens[0].GetToken(ctx, forced) }()
	<-held // the first replica holds the lock, its request is out
	if err := rs[0].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // past its 2 s lease
	mine, err := tokens[1].GetToken(ctx, forced)
	if err != nil {
		t.Fatalf("GetToken on the other replica while the lock holder is stopped: %v", err)
	}
	close(release)
	if err := rs[0].cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, func() error {
		if !strings.Contains(logs[0].String(), "lost the account's refresh lock before storing its new token") {
			return errors.New("the continued replica did not report that it lost the lock")
		}
		return nil
	})
	time.Sleep(time.Second) // a write it made would reach the other replica by now
	if got, err := tokens[1].GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"}); err != nil || got.GetAccessToken() != mine.GetAccessToken() {
		t.Fatalf("the token stored by the lock's new holder was replaced (%v)", err)
	}
	if n := fake.Requests(); n != 3 {
		t.Fatalf("%d token requests, want 3: the link's, the stopped replica's, the new lock holder's", n)
	}
}

// TestStoppedReplicaRefusesKeysRevokedMeanwhile stops (SIGSTOP) a replica,
// revokes a caller key on another, and continues the first: from the
// moment it runs again it never accepts the key, although its copy of
// the keys learns of the revocation only when its watch catches up.
func TestStoppedReplicaRefusesKeysRevokedMeanwhile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	ctx := context.Background()
	e := newE2ESetup(t)
	cluster := etcdtest.Start(t, 1)
	var rs [2]*runningBinary
	for i := range rs {
		rs[i] = startBinary(t, e.bin, &lockedWriter{w: &bytes.Buffer{}}, "--storage", "etcd", "--etcd-endpoints", strings.Join(cluster.Endpoints(), ","),
			"--data-dir", filepath.Join(t.TempDir(), "data"), "--rate-limit", "-1", "--unauthenticated-rate-limit", "-1",
			"--jumpcloud-token-url-us", e.fakeURL+jumpcloudfake.TokenPath, "--jumpcloud-api-url-us", e.fakeURL+jumpcloudfake.APIPath)
	}
	adminConn := rs[0].connect(t, keyCreds(rs[0].bootstrapKey)...)
	accounts := credbrokerv1.NewAccountServiceClient(adminConn)
	callers := credbrokerv1.NewCallerServiceClient(adminConn)
	createCheckerKey(t, adminConn) // linkAccounts grants it
	linkAccounts(t, accounts, 1)
	for round := range 3 {
		id := fmt.Sprintf("victim-%d", round)
		created, err := callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: id, CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := accounts.AddAccountGrant(ctx, &credbrokerv1.AddAccountGrantRequest{Name: "accounts/acct-0", Principal: "callerKeys/" + id}); err != nil {
			t.Fatal(err)
		}
		tokens := credbrokerv1.NewTokenServiceClient(rs[1].connect(t, keyCreds(created.GetKey())...))
		get := func() error {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			_, err := tokens.GetToken(cctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acct-0"})
			return err
		}
		waitUntil(t, 5*time.Second, get)

		if err := rs[1].cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		time.Sleep(1500 * time.Millisecond)
		if _, err := callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/" + id}); err != nil {
			t.Fatal(err)
		}
		// Calls made while it is stopped wait in its sockets, beside the
		// watch's news of the revocation.
		var wg sync.WaitGroup
		var accepted atomic.Int32
		for range 20 {
			wg.Go(func() {
				if get() == nil {
					accepted.Add(1)
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		if err := rs[1].cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if n := accepted.Load(); n > 0 {
			t.Fatalf("round %d: the continued replica accepted a key revoked while it was stopped, %d times", round, n)
		}
		// Caught up, it refuses the key as revoked.
		waitUntil(t, 5*time.Second, func() error {
			if err := get(); status.Code(err) != codes.Unauthenticated {
				return fmt.Errorf("round %d: %v, want UNAUTHENTICATED", round, err)
			}
			return nil
		})
	}
}
