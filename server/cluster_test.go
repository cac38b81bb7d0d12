package server_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/storage/etcd/etcdtest"
)

// startReplicas starts n brokers on one new etcd cluster of members
// members, sharing one fake provider; the first bootstraps the store, the
// others use its keys.
func startReplicas(t *testing.T, n, members int) []*broker {
	t.Helper()
	cluster := etcdtest.Start(t, members)
	cfg, fake, logs := newConfig(t)
	cfg.Storage = datadir.StorageEtcd
	cfg.Etcd.Endpoints = cluster.Endpoints()
	first := startWith(t, cfg, fake, logs)
	replicas := []*broker{first}
	for range n - 1 {
		rc := cfg
		rc.DataDir = t.TempDir()
		keysByDataDir.Store(rc.DataDir, first.keys)
		replicas = append(replicas, startWith(t, rc, fake, &syncBuffer{}))
	}
	return replicas
}

// An account linked on one replica serves tokens on another; a key
// revoked on one is refused on every other within a second.
func TestReplicasShareChanges(t *testing.T) {
	ctx := context.Background()
	rs := startReplicas(t, 3, 1)
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
		time.Sleep(10 * time.Millisecond)
	}
}
