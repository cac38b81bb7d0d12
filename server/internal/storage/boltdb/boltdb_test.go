package boltdb

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/storagetest"
)

func openTest(t *testing.T, path string) *DB {
	t.Helper()
	d, err := Open(path, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T, logs ...string) storage.Backend {
		d, err := Open(filepath.Join(t.TempDir(), "credbroker.db"), time.Second, logs...)
		if err != nil {
			t.Fatal(err)
		}
		return d
	})
}

// What was committed is there after a reopen, with the same versions, and
// revisions go on from where they were; a watch from before the reopen
// gets ErrCompacted, since the changes were kept in memory.
func TestReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "credbroker.db")
	d := openTest(t, path)
	rev, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("1"))})
	if err != nil {
		t.Fatal(err)
	}
	before, _ := d.Get(ctx, "accounts/a")
	d.Close()

	d = openTest(t, path)
	defer d.Close()
	after, err := d.Get(ctx, "accounts/a")
	if err != nil || string(after.Value) != "1" || after.Version != before.Version {
		t.Fatalf("after a reopen: %+v, %v (version before %d)", after, err, before.Version)
	}
	if next, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/b", nil)}); err != nil || next != rev+1 {
		t.Fatalf("revision after a reopen: %d, %v, want %d", next, err, rev+1)
	}
	c := <-d.Watch(ctx, "accounts/", rev-1)
	if !errors.Is(c.Err, storage.ErrCompacted) {
		t.Fatalf("watch from before the reopen: %+v, want ErrCompacted", c)
	}
}

// A second process (here, a second open) waits for the lock, then gives up.
func TestSecondOpenFailsFast(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	d := openTest(t, path)
	defer d.Close()
	if _, err := Open(path, 50*time.Millisecond); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
}

// A shredding write makes a compaction pending; the compaction leaves no
// copy of the shredded value in the file.
func TestShreddingCompacts(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "credbroker.db")
	d := openTest(t, path)
	defer d.Close()
	canary := []byte("sealed-canary-0123456789")
	if _, err := d.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", canary)}); err != nil {
		t.Fatal(err)
	}
	if pending, _ := d.CompactPending(); pending {
		t.Fatal("a put made a compaction pending")
	}
	if _, err := d.Txn(ctx, nil, []storage.Op{storage.Delete("accounts/a").Shredding()}); err != nil {
		t.Fatal(err)
	}
	if pending, _ := d.CompactPending(); !pending {
		t.Fatal("a shredding delete did not make a compaction pending")
	}
	if err := d.Compact(); err != nil {
		t.Fatal(err)
	}
	if pending, _ := d.CompactPending(); pending {
		t.Fatal("still pending after Compact")
	}
	if containsFile(t, path, canary) {
		t.Fatal("the compacted file holds the deleted value")
	}
	if _, err := d.Txn(ctx, nil, []storage.Op{storage.Put("meta/compact-pending", nil)}); err == nil {
		t.Fatal("a put of the engine's own key was taken")
	}
}

func containsFile(t *testing.T, path string, b []byte) bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		t.Fatalf("read %s: %d bytes, %v", path, len(data), err)
	}
	return bytes.Contains(data, b)
}

// Transactions made at once are committed together, each as if alone: in
// one order, each with a revision of its own, a watch seeing each change
// once in that order; of those whose conditions exclude each other, one
// commits and the others get ErrConflict, and change nothing.
func TestConcurrentTransactionsCommitAsIfAlone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := openTest(t, filepath.Join(t.TempDir(), "credbroker.db"))
	defer d.Close()
	watch := d.Watch(ctx, "kind/", 0)
	const callers, each = 32, 20
	revs := make(chan storage.Revision, callers*each)
	won := make(chan int, callers)
	var wg sync.WaitGroup
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				rev, err := d.Txn(ctx, []storage.Cond{storage.VersionIs(fmt.Sprintf("kind/%d-%d", c, i), storage.Absent)},
					[]storage.Op{storage.Put(fmt.Sprintf("kind/%d-%d", c, i), []byte("v"))})
				if err != nil {
					t.Error(err)
					return
				}
				revs <- rev
			}
			_, err := d.Txn(ctx, []storage.Cond{storage.VersionIs("kind/shared", storage.Absent)}, []storage.Op{storage.Put("kind/shared", fmt.Appendf(nil, "%d", c))})
			switch {
			case err == nil:
				won <- c
			case !errors.Is(err, storage.ErrConflict):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(revs)
	close(won)
	seen := map[storage.Revision]bool{}
	for r := range revs {
		if seen[r] {
			t.Fatalf("revision %d given twice", r)
		}
		seen[r] = true
	}
	winner, ok := <-won
	if _, again := <-won; !ok || again {
		t.Fatal("the shared key was created by none, or more than one")
	}
	if r, err := d.Get(ctx, "kind/shared"); err != nil || string(r.Value) != fmt.Sprint(winner) {
		t.Fatalf("the shared key: %q, %v; want the winner's %d", r.Value, err, winner)
	}
	want := storage.Revision(callers*each + 1)
	var last storage.Revision
	for last < want {
		select {
		case ch := <-watch:
			if ch.Revision != last+1 || len(ch.Events) != 1 {
				t.Fatalf("change %+v after revision %d", ch, last)
			}
			last = ch.Revision
		case <-time.After(10 * time.Second):
			t.Fatalf("the watch stopped at revision %d of %d", last, want)
		}
	}
}

// Pages given back are read again when needed; after Close there is
// nothing to give back.
func TestReleasePages(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "credbroker.db"))
	value := bytes.Repeat([]byte("v"), 3000)
	for i := range 500 {
		if _, err := d.Txn(ctx, nil, []storage.Op{storage.Put(fmt.Sprintf("kind/%03d", i), value)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	for i := range 500 {
		if r, err := d.Get(ctx, fmt.Sprintf("kind/%03d", i)); err != nil || !bytes.Equal(r.Value, value) {
			t.Fatalf("record %d after ReleasePages: %v", i, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.ReleasePages(); err != nil {
		t.Fatalf("ReleasePages after Close: %v", err)
	}
}

// ListInPlace lends the page List copies: the same records, values and
// More for every kind of range, without versions.
func TestListInPlaceLendsWhatListCopies(t *testing.T) {
	ctx := context.Background()
	d := openTest(t, filepath.Join(t.TempDir(), "credbroker.db"))
	defer d.Close()
	var ops []storage.Op
	for i := range 30 {
		ops = append(ops, storage.Put(fmt.Sprintf("audit/%02d", i), []byte(fmt.Sprint("event ", i))))
	}
	ops = append(ops, storage.Put("auditx/a", []byte("neighbour")))
	if _, err := d.Txn(ctx, nil, ops); err != nil {
		t.Fatal(err)
	}
	for _, r := range []storage.Range{
		{Prefix: "audit/"}, {Prefix: "audit/", Limit: 7}, {Prefix: "audit/", After: "audit/12", Limit: 5},
		{Prefix: "audit/", Reverse: true, Limit: 4}, {Prefix: "audit/", Reverse: true, After: "audit/20", From: "audit/15"},
		{Prefix: "audit/2"}, {Prefix: "nothing/"},
	} {
		want, err := d.List(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		var got storage.Page
		err = d.ListInPlace(ctx, r, func(p storage.Page) error {
			got = p
			got.Records = nil
			for _, rec := range p.Records {
				if rec.Version != 0 {
					t.Errorf("%+v: %s lent with version %d", r, rec.Key, rec.Version)
				}
				rec.Value, rec.Version = bytes.Clone(rec.Value), versionOf(rec.Value)
				got.Records = append(got.Records, rec)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(want.Records) == 0 && r.Prefix != "nothing/" {
			t.Fatalf("%+v listed nothing", r)
		}
		if got.More != want.More || got.Revision != want.Revision || len(got.Records) != len(want.Records) {
			t.Fatalf("%+v: lent %d records, more %v, revision %d; List: %d, %v, %d", r, len(got.Records), got.More, got.Revision, len(want.Records), want.More, want.Revision)
		}
		for i := range want.Records {
			if g, w := got.Records[i], want.Records[i]; g.Key != w.Key || !bytes.Equal(g.Value, w.Value) || g.Version != w.Version {
				t.Errorf("%+v: record %d lent %+v, listed %+v", r, i, g, w)
			}
		}
	}
}
