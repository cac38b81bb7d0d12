package etcd

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/server/devetcd/etcdtest"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/storagetest"
)

// The suite runs on one real etcd, each test under a prefix of its own.
func TestConformance(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	n := 0
	storagetest.Run(t, func(t *testing.T, logs ...string) storage.Backend {
		n++
		d, err := Open(Config{Endpoints: cluster.Endpoints(), Prefix: fmt.Sprintf("/conformance-%d/", n)}, logs...)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// openOnOne opens a DB on a one-member etcd of its own.
func openOnOne(t *testing.T) *DB {
	d, err := Open(Config{Endpoints: etcdtest.Start(t, 1).Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// A commit that shreds sealed material leaves a marker; Compact removes
// the history that holds the material, and the marker.
func TestShreddingCompactsHistory(t *testing.T) {
	ctx := context.Background()
	d := openOnOne(t)
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
	if resp, err := d.Client().Get(ctx, d.physical("accounts/a"), clientRev(first)); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("history before compaction: %v %v", resp, err)
	}
	if err := d.Compact(); err != nil {
		t.Fatal(err)
	}
	if pending, err := d.CompactPending(); err != nil || pending {
		t.Fatalf("pending after Compact: %v %v", pending, err)
	}
	if _, err := d.Client().Get(ctx, d.physical("accounts/a"), clientRev(first)); err == nil {
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

// A lock is held by one process at a time; a holder whose lease ended
// (as a paused process's does) no longer holds it, and its fenced writes
// fail while the new holder's commit.
func TestLockFencesWrites(t *testing.T) {
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	open := func() *DB {
		d, err := Open(Config{Endpoints: cluster.Endpoints(), LockTTL: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a, b := open(), open()
	la, err := a.Lock(ctx, "tokens/acme")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := b.Lock(wctx, "tokens/acme"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a second holder while the first holds the lock: %v", err)
	}
	if _, err := a.Txn(ctx, []storage.Cond{la.Held}, []storage.Op{storage.Put("tokens/acme", []byte("a1"))}); err != nil {
		t.Fatalf("the holder's fenced write: %v", err)
	}
	// a's lease ends, as when a stops answering for longer than its TTL.
	a.sessionMu.Lock()
	lease := a.session.Lease()
	a.sessionMu.Unlock()
	if _, err := a.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	lb, err := b.Lock(ctx, "tokens/acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Txn(ctx, []storage.Cond{lb.Held}, []storage.Op{storage.Put("tokens/acme", []byte("b1"))}); err != nil {
		t.Fatalf("the new holder's fenced write: %v", err)
	}
	if _, err := a.Txn(ctx, []storage.Cond{la.Held}, []storage.Op{storage.Put("tokens/acme", []byte("a2"))}); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("the former holder's fenced write: %v, want ErrConflict", err)
	}
	if r, err := a.Get(ctx, "tokens/acme"); err != nil || string(r.Value) != "b1" {
		t.Fatalf("stored %q (%v), want the new holder's", r.Value, err)
	}
	lb.Unlock()
	// a takes the lock again, on a new lease.
	la2, err := a.Lock(ctx, "tokens/acme")
	if err != nil {
		t.Fatal(err)
	}
	la2.Unlock()
}

// A wait for a lock ends when its context does, with etcd out of reach
// too: etcd's Mutex then removes its key with the client's own context,
// which would have held up a broker's stop (it waits for the waiters)
// until the client closed, which comes after.
func TestLockWaitEndsWithItsContextWithoutEtcd(t *testing.T) {
	cluster := etcdtest.Start(t, 1)
	open := func() *DB {
		d, err := Open(Config{Endpoints: cluster.Endpoints(), LockTTL: 2 * time.Second, RequestTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	a, b := open(), open()
	if _, err := a.Lock(context.Background(), "meta/relay"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() {
		_, err := b.Lock(ctx, "meta/relay")
		waited <- err
	}()
	time.Sleep(200 * time.Millisecond) // b waits for a's key to go
	cluster.Stop(0)
	time.Sleep(time.Second) // the client sees it gone
	cancel()
	select {
	case err := <-waited:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the wait ended with %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the wait for the lock did not end with its context")
	}
}

// TrimHistory compacts etcd's history up to the revision it noted a
// retention ago, and no further.
func TestTrimHistory(t *testing.T) {
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	d, err := Open(Config{Endpoints: cluster.Endpoints(), HistoryRetention: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("1"))})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := d.TrimHistory(t0); err != nil { // noted: first
		t.Fatal(err)
	}
	second, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("2"))})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.TrimHistory(t0.Add(30 * time.Second)); err != nil { // nothing a minute old yet
		t.Fatal(err)
	}
	if _, err := d.cli.Get(ctx, d.physical("accounts/a"), clientRev(first)); err != nil {
		t.Fatalf("history compacted before its retention: %v", err)
	}
	if _, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("3"))}); err != nil {
		t.Fatal(err)
	}
	if err := d.TrimHistory(t0.Add(61 * time.Second)); err != nil { // compacts up to first
		t.Fatal(err)
	}
	if _, err := d.cli.Get(ctx, d.physical("accounts/a"), clientRev(first-1)); err == nil {
		t.Fatal("history older than the retention is still kept")
	}
	if r, err := d.cli.Get(ctx, d.physical("accounts/a"), clientRev(second)); err != nil || string(r.Kvs[0].Value) != "2" {
		t.Fatalf("history within the retention: %v %v", r, err)
	}
}

// Load fills an empty prefix, refuses one that holds records, and
// finishes a load that was interrupted, dropping what it had written.
func TestLoad(t *testing.T) {
	ctx := context.Background()
	cluster := etcdtest.Start(t, 1)
	d, err := Open(Config{Endpoints: cluster.Endpoints()}, "audit")
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	records := func(kv ...string) func(func(storage.Record) error) error {
		return func(put func(storage.Record) error) error {
			for i := 0; i < len(kv); i += 2 {
				if err := put(storage.Record{Key: kv[i], Value: []byte(kv[i+1])}); err != nil {
					return err
				}
			}
			return nil
		}
	}
	if err := d.Load(ctx, records("meta/id", "x", "accounts/a", "1", "audit/e1", "ev")); err != nil {
		t.Fatal(err)
	}
	if r, err := d.Get(ctx, "audit/e1"); err != nil || string(r.Value) != "ev" {
		t.Fatalf("a loaded log record: %v %v", r, err)
	}
	if err := d.Load(ctx, records("accounts/b", "2")); !errors.Is(err, ErrNotEmpty) {
		t.Fatalf("a load into a prefix with records: %v", err)
	}
	// An interrupted load: its marker and some of its records are there.
	if _, err := d.cli.Put(ctx, d.prefix+loadingKey, ""); err != nil {
		t.Fatal(err)
	}
	if loading, err := d.Loading(ctx); err != nil || !loading {
		t.Fatalf("Loading with the marker: %v %v", loading, err)
	}
	if err := d.Load(ctx, records("accounts/c", "3")); err != nil {
		t.Fatal(err)
	}
	if loading, err := d.Loading(ctx); err != nil || loading {
		t.Fatalf("Loading after the load: %v %v", loading, err)
	}
	p, err := d.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil || len(p.Records) != 1 || p.Records[0].Key != "accounts/c" {
		t.Fatalf("after finishing an interrupted load: %v %v", p.Records, err)
	}
	if _, err := d.Get(ctx, "audit/e1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a record of the interrupted load survived: %v", err)
	}
}

// A whole range is read a page at a time, every page at the revision of
// the first: a record written meanwhile, after the first page, is not in
// it, for List and for Snapshot.
func TestWholeRangesAreReadAtOneRevision(t *testing.T) {
	ctx := context.Background()
	d := openOnOne(t)
	var ops []storage.Op
	for i := range rangePage + 10 {
		ops = append(ops, storage.Put(fmt.Sprintf("accounts/a%05d", i), []byte("x")))
	}
	for _, chunk := range storage.EtcdLimits.Chunks(ops) {
		if _, err := d.Txn(ctx, nil, chunk); err != nil {
			t.Fatal(err)
		}
	}
	p, err := d.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil || len(p.Records) != rangePage+10 {
		t.Fatalf("List of %d records: %d, %v", rangePage+10, len(p.Records), err)
	}
	n, late := 0, false
	rev, err := d.Snapshot(ctx, func(r storage.Record) error {
		if n++; n == 1 {
			if _, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/zz", []byte("late"))}); err != nil {
				return err
			}
		}
		late = late || r.Key == "accounts/zz"
		return nil
	})
	if err != nil || late || n < rangePage+10 {
		t.Fatalf("Snapshot: %d records, the late one among them: %v, %v", n, late, err)
	}
	if rev != p.Revision {
		t.Fatalf("Snapshot's revision %d, want the one before the late write (%d)", rev, p.Revision)
	}
}
