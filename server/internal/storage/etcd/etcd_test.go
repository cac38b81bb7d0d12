package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/etcd/etcdtest"
	"github.com/credbroker/credbroker/server/internal/storage/storagetest"
)

// The suite runs on one real etcd, each test under a prefix of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	n := 0
	storagetest.Run(t, func(t *testing.T) storage.Backend {
		n++
		d, err := Open(Config{Endpoints: cluster.Endpoints(), Prefix: fmt.Sprintf("/conformance-%d/", n)})
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// A commit that shreds sealed material leaves a marker; Compact removes
// the history that holds the material, and the marker.
func TestShreddingCompactsHistory(t *testing.T) {
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	d, err := Open(Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("sealed"))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Txn(ctx, nil, []storage.Op{storage.Delete("accounts/a").Shredding()}); err != nil {
		t.Fatal(err)
	}
	if pending, err := d.CompactPending(); err != nil || !pending {
		t.Fatalf("pending after a shredding commit: %v %v", pending, err)
	}
	// Before the compaction, the old value is still in etcd's history.
	if resp, err := d.Client().Get(ctx, d.Prefix()+"accounts/a", clientRev(first)); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("history before compaction: %v %v", resp, err)
	}
	if err := d.Compact(); err != nil {
		t.Fatal(err)
	}
	if pending, err := d.CompactPending(); err != nil || pending {
		t.Fatalf("pending after Compact: %v %v", pending, err)
	}
	if _, err := d.Client().Get(ctx, d.Prefix()+"accounts/a", clientRev(first)); err == nil {
		t.Fatal("the shredded value is still in etcd's history")
	}
	// A watcher from before the compaction is told to read afresh.
	var last storage.Change
	for c := range d.Watch(ctx, "accounts/", first-1) {
		last = c
	}
	if !errors.Is(last.Err, storage.ErrCompacted) {
		t.Fatalf("a watch from before the compaction ended with %+v, want ErrCompacted", last)
	}
}

func clientRev(r storage.Revision) clientv3.OpOption { return clientv3.WithRev(int64(r)) }
