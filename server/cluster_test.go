package server_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/devetcd/etcdtest"
	"github.com/credbroker/credbroker/server/internal/callers"
)

// startReplicas starts n brokers on one new etcd cluster of members
// members, sharing one fake provider; the first bootstraps the store, the
// others use its keys. tweak, if set, adjusts replica i's configuration.
func startReplicas(t *testing.T, n, members int, tweak func(i int, cfg *server.Config)) ([]*broker, *etcdtest.Cluster) {
	t.Helper()
	cluster := etcdtest.Start(t, members)
	cfg, fake, _ := newConfig(t)
	cfg.Storage = datadir.StorageEtcd
	cfg.Etcd.Endpoints = cluster.Endpoints()
	cfg.Etcd.LockTTL = 2 * time.Second // the test cluster's shortest lease
	var replicas []*broker
	for i := range n {
		rc := cfg
		if i > 0 {
			rc.DataDir = t.TempDir()
			keysByDataDir.Store(rc.DataDir, replicas[0].keys)
		}
		logs := &syncBuffer{}
		rc.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		if tweak != nil {
			tweak(i, &rc)
		}
		replicas = append(replicas, startWith(t, rc, fake, logs))
	}
	return replicas, cluster
}

// An account linked on one replica serves tokens on another; a key
// revoked on one is refused on every other within a second.
func TestReplicasShareChanges(t *testing.T) {
	ctx := context.Background()
	rs, _ := startReplicas(t, 3, 1, nil)
	a, b, c := rs[0], rs[1], rs[2]
	a.link(t, "acme")
	// Linking on a returns once a holds the account; b and c follow the
	// watch.
	for _, r := range []*broker{b, c} {
		waitFor(t, 5*time.Second, func() error {
			_, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			return err
		})
	}
	if tok := b.token(t, "acme").GetAccessToken(); tok == "" {
		t.Fatal("no token on the second replica")
	}

	if _, err := a.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/svc"}); err != nil {
		t.Fatal(err)
	}
	revoked := time.Now()
	for _, r := range []*broker{b, c} {
		for {
			_, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if status.Code(err) == codes.Unauthenticated {
				break
			}
			if time.Since(revoked) > time.Second {
				t.Fatalf("a replica still accepts a key revoked %s ago on another: %v", time.Since(revoked), err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	// A key deleted on one replica frees its name on every other: a new
	// key of the name, made on another, is known to the third.
	if _, err := a.accounts.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: "accounts/acme", Principal: "callerKeys/svc"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.callers.DeleteCallerKey(ctx, &credbrokerv1.DeleteCallerKeyRequest{Name: "callerKeys/svc"}); err != nil {
		t.Fatal(err)
	}
	var renewed string
	waitFor(t, 5*time.Second, func() error {
		created, err := b.callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: "svc", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
		renewed = created.GetKey()
		return err
	})
	tokens := credbrokerv1.NewTokenServiceClient(c.dial(t, renewed, nil))
	waitFor(t, 5*time.Second, func() error {
		_, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		if status.Code(err) == codes.PermissionDenied { // known, and granted nothing
			return nil
		}
		return fmt.Errorf("the new key on the third replica: %v", err)
	})
}

// A cold account asked for by 200 callers spread over 3 replicas costs
// one token request at the provider: the replicas that did not get the
// refresh lock first read the token the first one stored.
func TestOneTokenRequestClusterWide(t *testing.T) {
	ctx := context.Background()
	rs, _ := startReplicas(t, 3, 1, func(_ int, cfg *server.Config) {
		cfg.Tokens.ScanInterval = time.Hour // no background refresh
	})
	fake := rs[0].fake
	fake.SetTokenTTL(32 * time.Second) // 2 s after the 30 s safety margin
	rs[0].link(t, "acme")
	for _, r := range rs {
		waitFor(t, 5*time.Second, func() error {
			_, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			return err
		})
	}
	if n := fake.Requests(); n != 1 {
		t.Fatalf("%d token requests after linking, want 1 (the replicas share the stored token)", n)
	}
	time.Sleep(2100 * time.Millisecond) // the token has expired everywhere

	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Go(func() {
			resp, err := rs[i%3].tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if err == nil && resp.GetAccessToken() == "" {
				err = errors.New("an empty token")
			}
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("GetToken: %v", err)
	}
	if n := fake.Requests(); n != 2 {
		t.Fatalf("%d token requests for a cold account asked for on 3 replicas at once, want 1 (2 with the link's)", n)
	}
}

// A replica paused while it holds an account's refresh lock, for longer
// than the lock's lease, does not ask the provider once it resumes: the
// lock has gone to another replica, whose token it then serves. The
// provider sees one request for the token's lifetime.
func TestPausedLockHolderDoesNotAsk(t *testing.T) {
	ctx := context.Background()
	paused, resume := make(chan struct{}), make(chan struct{})
	var once sync.Once
	rs, cluster := startReplicas(t, 2, 1, func(i int, cfg *server.Config) {
		cfg.Tokens.ScanInterval = time.Hour
		if i == 0 {
			cfg.Tokens.OnLocked = func(string) {
				once.Do(func() { close(paused); <-resume })
			}
		}
	})
	a, b := rs[0], rs[1]
	a.fake.SetTokenTTL(32 * time.Second) // 2 s after the 30 s safety margin
	a.link(t, "acme")
	waitFor(t, 5*time.Second, func() error {
		_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return err
	})
	time.Sleep(2100 * time.Millisecond)

	fromA := make(chan *credbrokerv1.GetTokenResponse, 1)
	go func() {
		resp, err := a.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		if err != nil {
			t.Errorf("GetToken on the paused replica: %v", err)
		}
		fromA <- resp
	}()
	<-paused
	// a's lease ends, as it does when a stops answering for longer than
	// its TTL.
	revokeLockLeases(t, cluster, "acme")
	fromB := b.token(t, "acme")
	close(resume)
	if got := <-fromA; got.GetAccessToken() != fromB.GetAccessToken() {
		t.Error("the resumed replica did not serve the token the lock's new holder stored")
	}
	if n := a.fake.Requests(); n != 2 {
		t.Fatalf("%d token requests, want 2 (the link's, and one for the token's lifetime)", n)
	}
	if !strings.Contains(a.logs.String(), "refresh lock") {
		t.Error("the paused replica did not log that it lost the lock")
	}
}

// revokeLockLeases ends the leases of the processes holding or waiting for
// an account's refresh lock.
func revokeLockLeases(t *testing.T, cluster *etcdtest.Cluster, account string) {
	t.Helper()
	ctx := context.Background()
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/credbroker/locks/tokens/"+account+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("no lock holder of %s: %v", account, err)
	}
	for _, kv := range resp.Kvs {
		if _, err := cli.Revoke(ctx, clientv3.LeaseID(kv.Lease)); err != nil {
			t.Fatal(err)
		}
	}
}

// A replica that cannot reach an etcd quorum says so: /readyz and its
// gRPC health report not serving, and calls get UNAVAILABLE with the
// reason STORAGE_UNAVAILABLE at once; when the quorum is back it serves
// again by itself.
func TestReplicaWithoutQuorumIsUnavailable(t *testing.T) {
	ctx := context.Background()
	rs, cluster := startReplicas(t, 1, 3, nil)
	b := rs[0]
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("the replica's log:\n" + b.logs.String())
		}
	})
	b.link(t, "acme")
	b.token(t, "acme")

	cluster.Stop(1)
	cluster.Stop(2)
	waitFor(t, 15*time.Second, func() error {
		if code, body := b.opsGet(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "storage") {
			return fmt.Errorf("/readyz: %d %q", code, body)
		}
		return nil
	})
	h, err := b.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health without a quorum: %v %v", h, err)
	}
	start := time.Now()
	_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unavailable, "STORAGE_UNAVAILABLE")
	if d := time.Since(start); d > time.Second {
		t.Errorf("the refusal took %s: it should not wait for the storage", d)
	}
	_, err = b.accounts.ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{})
	wantCode(t, err, codes.Unavailable, "STORAGE_UNAVAILABLE")

	cluster.Restart(1)
	cluster.Restart(2)
	waitFor(t, 20*time.Second, func() error {
		_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return err
	})
	if code, body := b.opsGet(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz once etcd is back: %d %q", code, body)
	}
	if h, err := b.health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health once etcd is back: %v %v", h, err)
	}
}

// waitFor calls fn until it returns nil, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, fn func() error) {
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
		time.Sleep(2 * time.Millisecond)
	}
}

// Two admins, each revoking the other's key on a different replica at the
// same moment, cannot leave the cluster without an admin: one revocation
// is refused with LAST_ADMIN.
func TestReplicasKeepAnAdmin(t *testing.T) {
	ctx := context.Background()
	rs, _ := startReplicas(t, 2, 1, nil)
	adminID, adminKey := callers.BootstrapKeyID, rs[0].keys.admin
	for round := range 5 {
		// The admin makes two admin keys and revokes its own: they are
		// the only admins.
		admin := credbrokerv1.NewCallerServiceClient(rs[0].dial(t, adminKey, nil))
		var ids, keys [2]string
		for i := range ids {
			ids[i] = fmt.Sprintf("admin-%d-%d", round, i)
			created, err := admin.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: ids[i], CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_ADMIN}})
			if err != nil {
				t.Fatal(err)
			}
			keys[i] = created.GetKey()
		}
		if _, err := admin.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/" + adminID}); err != nil {
			t.Fatal(err)
		}
		// Each revokes the other's key on its own replica, at once.
		var clients [2]credbrokerv1.CallerServiceClient
		for i := range clients {
			clients[i] = credbrokerv1.NewCallerServiceClient(rs[i].dial(t, keys[i], nil))
			waitFor(t, 5*time.Second, func() error {
				_, err := clients[i].ListCallerKeys(ctx, &credbrokerv1.ListCallerKeysRequest{})
				return err
			})
		}
		var wg sync.WaitGroup
		var errs [2]error
		for i := range clients {
			wg.Go(func() {
				_, errs[i] = clients[i].RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/" + ids[1-i]})
			})
		}
		wg.Wait()
		survivors := 0
		for i, err := range errs {
			if err == nil {
				survivors++
				adminID, adminKey = ids[i], keys[i]
			} else if status.Code(err) != codes.Unauthenticated { // the other's revocation reached this replica first
				wantCode(t, err, codes.FailedPrecondition, "LAST_ADMIN")
			}
		}
		if survivors != 1 {
			t.Fatalf("round %d: %d of the two revocations succeeded (%v), want exactly 1", round, survivors, errs)
		}
	}
}

// Retention by count holds for the whole cluster's trail: events written
// by every replica count, wherever the pruning runs.
func TestClusterAuditRetention(t *testing.T) {
	ctx := context.Background()
	rs, cluster := startReplicas(t, 2, 1, func(_ int, cfg *server.Config) {
		cfg.Audit.MaxEvents = 60
		cfg.Audit.PruneInterval = 100 * time.Millisecond
		cfg.Gate.RateLimit = -1
	})
	rs[0].link(t, "acme")
	waitFor(t, 5*time.Second, func() error {
		_, err := rs[1].tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
		return err
	})
	for i := range 100 { // 50 on each replica: neither wrote more than 60
		rs[i%2].token(t, "acme")
	}
	// Counted in etcd itself: listing the trail would add events.
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	waitFor(t, 10*time.Second, func() error {
		resp, err := cli.Get(ctx, "/credbroker/log/audit/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		// 60 calls' events, and the few admin changes kept by age only.
		if resp.Count > 70 {
			return fmt.Errorf("%d audit events kept, want 60 GetToken events and the admin changes", resp.Count)
		}
		return nil
	})
}

// A replica that lost its watch while changes were made elsewhere, and
// whose missed changes etcd no longer keeps, reads the records afresh once
// it reaches etcd again: a key revoked meanwhile is refused, not served
// from a stale copy.
func TestReplicaResyncsAfterLostWatch(t *testing.T) {
	ctx := context.Background()
	rs, cluster := startReplicas(t, 2, 3, func(i int, cfg *server.Config) {
		if i == 1 { // the second replica reaches etcd through the first member only
			cfg.Etcd.Endpoints = cfg.Etcd.Endpoints[:1]
		} else {
			cfg.Etcd.Endpoints = cfg.Etcd.Endpoints[1:]
		}
	})
	a, b := rs[0], rs[1]
	a.link(t, "acme")
	cli, err := clientv3.New(clientv3.Config{Endpoints: cluster.Endpoints()[1:], Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	// A member that restarts may serve the replica's new watch before it
	// has applied the compaction it missed, and the watch then replays
	// the change after all: such a round shows nothing, and another is
	// tried, with another key.
	for round := range 3 {
		id := fmt.Sprintf("cut-off-%d", round)
		created, err := a.callers.CreateCallerKey(ctx, &credbrokerv1.CreateCallerKeyRequest{KeyId: id, CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER}})
		if err != nil {
			t.Fatal(err)
		}
		a.grant(t, "acme", "callerKeys/"+id)
		tokens := credbrokerv1.NewTokenServiceClient(b.dial(t, created.GetKey(), nil))
		waitFor(t, 5*time.Second, func() error {
			_, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			return err
		})
		resyncs := strings.Count(b.logs.String(), "reading the records afresh")
		cluster.Stop(0)
		if _, err := a.callers.RevokeCallerKey(ctx, &credbrokerv1.RevokeCallerKeyRequest{Name: "callerKeys/" + id}); err != nil {
			t.Fatal(err)
		}
		// etcd's history of the revocation is compacted away, as its
		// auto-compaction would: the replica cannot catch up by replaying it.
		resp, err := cli.Get(ctx, "/credbroker/")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
			t.Fatal(err)
		}
		cluster.Restart(0)
		waitFor(t, 20*time.Second, func() error {
			_, err := tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			if status.Code(err) == codes.Unauthenticated {
				return nil
			}
			return fmt.Errorf("the key revoked while the replica was cut off: %v", err)
		})
		if strings.Count(b.logs.String(), "reading the records afresh") > resyncs {
			return
		}
		t.Logf("round %d: the restarted member replayed the revocation; trying again", round)
	}
	t.Error("the replica never read the records afresh after losing its watch")
}

// A replica stops when asked, even while etcd is out of reach and a token
// renewal waits for it.
func TestReplicaStopsWithoutEtcd(t *testing.T) {
	rs, cluster := startReplicas(t, 1, 1, func(_ int, cfg *server.Config) {
		cfg.Tokens.ScanInterval = 50 * time.Millisecond
	})
	b := rs[0]
	b.fake.SetTokenTTL(32 * time.Second) // 2 s after the 30 s safety margin: renewed every second
	b.link(t, "acme")
	cluster.Stop(0)
	time.Sleep(3 * time.Second) // renewals are due, and cannot take their lock
	stopped := make(chan struct{})
	go func() { b.stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(30 * time.Second):
		t.Fatal("the replica did not stop within 30s of being asked, etcd out of reach")
	}
}

// When the provider rejects the replicas' token and issues shorter-lived
// ones from then on, one replica renews it and the others use its token,
// although it expires before the one they dropped.
func TestReplicasShareARenewalAfterRejection(t *testing.T) {
	ctx := context.Background()
	rs, _ := startReplicas(t, 3, 1, nil)
	fake := rs[0].fake
	rs[0].link(t, "acme") // an hour's token
	for _, r := range rs {
		waitFor(t, 5*time.Second, func() error {
			_, err := r.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
			return err
		})
	}
	before := fake.Requests()
	fake.SetTokenTTL(2 * time.Minute)
	fake.RevokeTokens() // the API answers 401 to the hour's token
	for i := range 30 {
		r := rs[i%3]
		if resp, body := r.proxyCall(t, http.MethodGet, "/v1/accounts/acme/proxy/v2/systems", r.keys.svc, nil, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("proxied call %d: HTTP %d %s", i, resp.StatusCode, body)
		}
	}
	if n := fake.Requests() - before; n != 1 {
		t.Fatalf("%d token requests after the rejection, want 1 for the whole cluster", n)
	}
}

// Replicas started at once on a new database all start: one identifies
// it and makes the first admin key, the others check their master key
// against what it wrote (they once failed, taking the race for a wrong
// key or a conflict).
func TestReplicasStartTogether(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	for round := range 8 {
		cfg, _, _ := newConfig(t)
		cfg.Storage = datadir.StorageEtcd
		cfg.Etcd.Endpoints = cluster.Endpoints()
		cfg.Etcd.Prefix = fmt.Sprintf("/round%d/", round)
		srvs, errs := make([]*server.Server, 3), make([]error, 3)
		var wg sync.WaitGroup
		for i := range srvs {
			rc := cfg
			rc.DataDir = t.TempDir()
			wg.Go(func() { srvs[i], errs[i] = server.New(rc) })
		}
		wg.Wait()
		keys := 0
		for i, srv := range srvs {
			if errs[i] != nil {
				t.Fatalf("round %d: replica %d: %v", round, i, errs[i])
			}
			if srv.BootstrapAdminKey() != "" {
				keys++
			}
			srv.Close()
		}
		if keys != 1 {
			t.Fatalf("round %d: %d replicas made an admin key, want 1", round, keys)
		}
	}
}
