// Package storagetest is the conformance suite of storage engines: every
// engine runs Run against a real instance of itself, so that the code above
// the storage interface behaves the same on each.
package storagetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Run runs the suite; open returns a new, empty engine with the given
// log kinds, which the suite closes.
func Run(t *testing.T, open func(t *testing.T, logs ...string) storage.Backend) {
	tests := []struct {
		name string
		fn   func(*testing.T, storage.Backend)
	}{
		{"GetPutDelete", testGetPutDelete},
		{"CompareAndSwap", testCompareAndSwap},
		{"AllOrNothing", testAllOrNothing},
		{"SameKeyTwice", testSameKeyTwice},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"ListPages", testListPages},
		{"ListReverse", testListReverse},
		{"ListBinaryKeys", testListBinaryKeys},
		{"Limits", testLimits},
		{"Revisions", testRevisions},
		{"Watch", testWatch},
		{"WatchEnds", testWatchEnds},
		{"LogsAreNotWatched", testLogsAreNotWatched},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := open(t, "audit")
			t.Cleanup(func() { b.Close() })
			tc.fn(t, b)
		})
	}
}

var ctx = context.Background()

func put(t *testing.T, b storage.Backend, kv ...string) storage.Revision {
	t.Helper()
	var ops []storage.Op
	for i := 0; i < len(kv); i += 2 {
		ops = append(ops, storage.Put(kv[i], []byte(kv[i+1])))
	}
	rev, err := b.Txn(ctx, nil, ops)
	if err != nil {
		t.Fatalf("put %v: %v", kv, err)
	}
	return rev
}

func mustGet(t *testing.T, b storage.Backend, key string) storage.Record {
	t.Helper()
	r, err := b.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	return r
}

func keys(rs []storage.Record) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Key)
	}
	return out
}

func testGetPutDelete(t *testing.T, b storage.Backend) {
	if _, err := b.Get(ctx, "accounts/a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get of a missing record: %v, want ErrNotFound", err)
	}
	put(t, b, "accounts/a", "one")
	r := mustGet(t, b, "accounts/a")
	if string(r.Value) != "one" || r.Key != "accounts/a" || r.Version == storage.Absent {
		t.Fatalf("got %+v", r)
	}
	put(t, b, "accounts/a", "two")
	if r2 := mustGet(t, b, "accounts/a"); string(r2.Value) != "two" || r2.Version == r.Version {
		t.Fatalf("after an update: %+v (version before %d)", r2, r.Version)
	}
	put(t, b, "accounts/empty", "")
	if r := mustGet(t, b, "accounts/empty"); len(r.Value) != 0 || r.Version == storage.Absent {
		t.Fatalf("an empty value: %+v", r)
	}
	if _, err := b.Txn(ctx, nil, []storage.Op{storage.Delete("accounts/a"), storage.Delete("accounts/never")}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "accounts/a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
}

func testCompareAndSwap(t *testing.T, b storage.Backend) {
	create := func(v string) error {
		_, err := b.Txn(ctx, []storage.Cond{storage.VersionIs("accounts/a", storage.Absent)}, []storage.Op{storage.Put("accounts/a", []byte(v))})
		return err
	}
	if err := create("first"); err != nil {
		t.Fatal(err)
	}
	if err := create("second"); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("second create: %v, want ErrConflict", err)
	}
	r := mustGet(t, b, "accounts/a")
	if string(r.Value) != "first" {
		t.Fatalf("a failed create wrote: %q", r.Value)
	}
	swap := func(from storage.Version, v string) error {
		_, err := b.Txn(ctx, []storage.Cond{storage.VersionIs("accounts/a", from)}, []storage.Op{storage.Put("accounts/a", []byte(v))})
		return err
	}
	if err := swap(r.Version, "updated"); err != nil {
		t.Fatal(err)
	}
	if err := swap(r.Version, "stale"); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("swap from a stale version: %v, want ErrConflict", err)
	}
	exists := func(key string) error {
		_, err := b.Txn(ctx, []storage.Cond{storage.Exists(key)}, []storage.Op{storage.Put("tokens/"+key, []byte("x"))})
		return err
	}
	if err := exists("accounts/a"); err != nil {
		t.Fatalf("Exists of a record: %v", err)
	}
	if err := exists("accounts/b"); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("Exists of a missing record: %v, want ErrConflict", err)
	}
	if _, err := b.Get(ctx, "tokens/accounts/b"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a failed transaction wrote: %v", err)
	}
}

func testAllOrNothing(t *testing.T, b storage.Backend) {
	put(t, b, "accounts/a", "a0", "tokens/a", "t0")
	a := mustGet(t, b, "accounts/a")
	put(t, b, "accounts/a", "a1")
	_, err := b.Txn(ctx, []storage.Cond{storage.Exists("tokens/a"), storage.VersionIs("accounts/a", a.Version)},
		[]storage.Op{storage.Put("tokens/a", []byte("t1")), storage.Delete("accounts/a"), storage.Put("audit/1", []byte("e"))})
	if !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("txn with one failing condition: %v, want ErrConflict", err)
	}
	if r := mustGet(t, b, "tokens/a"); string(r.Value) != "t0" {
		t.Fatalf("tokens/a = %q after a failed txn", r.Value)
	}
	if _, err := b.Get(ctx, "audit/1"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("audit/1 after a failed txn: %v", err)
	}
	// The same key written twice in one txn: the last op wins.
	put(t, b, "accounts/c", "first", "accounts/c", "last")
	if r := mustGet(t, b, "accounts/c"); string(r.Value) != "last" {
		t.Fatalf("accounts/c = %q", r.Value)
	}
}

// Many writers each add one to a counter by read, compare-and-swap, retry:
// none of the increments is lost.
// A transaction that writes one key twice leaves the last write.
func testSameKeyTwice(t *testing.T, b storage.Backend) {
	put(t, b, "accounts/a", "1", "accounts/a", "2")
	if r := mustGet(t, b, "accounts/a"); string(r.Value) != "2" {
		t.Fatalf("after two puts: %q", r.Value)
	}
	if _, err := b.Txn(ctx, nil, []storage.Op{storage.Put("accounts/a", []byte("3")), storage.Delete("accounts/a")}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "accounts/a"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("after a put and a delete: %v", err)
	}
}

func testConcurrentUpdates(t *testing.T, b storage.Backend) {
	put(t, b, "meta/counter", "0")
	const writers, each = 4, 10
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				for {
					r, err := b.Get(ctx, "meta/counter")
					if err != nil {
						t.Error(err)
						return
					}
					n, _ := strconv.Atoi(string(r.Value))
					_, err = b.Txn(ctx, []storage.Cond{storage.VersionIs(r.Key, r.Version)}, []storage.Op{storage.Put(r.Key, []byte(strconv.Itoa(n+1)))})
					if err == nil {
						break
					}
					if !errors.Is(err, storage.ErrConflict) {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if r := mustGet(t, b, "meta/counter"); string(r.Value) != strconv.Itoa(writers*each) {
		t.Fatalf("counter = %s, want %d", r.Value, writers*each)
	}
}

func testListPages(t *testing.T, b storage.Backend) {
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("accounts/acct-%02d", i)
		want = append(want, k)
		put(t, b, k, "v"+k)
	}
	// Neighbours that a prefix must not reach.
	put(t, b, "accountsx/a", "x", "account/a", "x", "tokens/acct-00", "x")
	var got []string
	after := ""
	for pages := 0; ; pages++ {
		p, err := b.List(ctx, storage.Range{Prefix: "accounts/", After: after, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range p.Records {
			if string(r.Value) != "v"+r.Key || r.Version == storage.Absent {
				t.Fatalf("record %+v", r)
			}
		}
		got = append(got, keys(p.Records)...)
		if !p.More {
			if pages != 2 || len(p.Records) != 5 {
				t.Fatalf("last page %d holds %d records", pages, len(p.Records))
			}
			break
		}
		after = p.Records[len(p.Records)-1].Key
	}
	if !slices.Equal(got, want) {
		t.Fatalf("pages listed %v, want %v", got, want)
	}
	p, err := b.List(ctx, storage.Range{Prefix: "accounts/acct-1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Records) != 10 || p.More || p.Records[0].Key != "accounts/acct-10" {
		t.Fatalf("prefix accounts/acct-1 listed %v", keys(p.Records))
	}
	p, err = b.List(ctx, storage.Range{Prefix: "nothing/"})
	if err != nil || len(p.Records) != 0 || p.More {
		t.Fatalf("an empty kind: %v, %v", p, err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "accounts/", After: "accounts/acct-24"})
	if err != nil || len(p.Records) != 0 || p.More {
		t.Fatalf("after the last key: %v, %v", keys(p.Records), err)
	}
	// A page exactly as long as what is left has nothing more.
	p, err = b.List(ctx, storage.Range{Prefix: "accounts/", After: "accounts/acct-19", Limit: 5})
	if err != nil || len(p.Records) != 5 || p.More {
		t.Fatalf("the last 5: %v more=%v, %v", keys(p.Records), p.More, err)
	}
}

func testListReverse(t *testing.T, b storage.Backend) {
	for i := range 5 {
		put(t, b, fmt.Sprintf("audit/%d", i), "e")
	}
	put(t, b, "auditx/9", "x", "audis/0", "x")
	p, err := b.List(ctx, storage.Range{Prefix: "audit/", Reverse: true, Limit: 2})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/4", "audit/3"}) || !p.More {
		t.Fatalf("newest two: %v more=%v, %v", keys(p.Records), p.More, err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "audit/", Reverse: true, After: "audit/3"})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/2", "audit/1", "audit/0"}) || p.More {
		t.Fatalf("before audit/3: %v more=%v, %v", keys(p.Records), p.More, err)
	}
	// A bound that is not a stored key.
	p, err = b.List(ctx, storage.Range{Prefix: "audit/", Reverse: true, After: "audit/25"})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/2", "audit/1", "audit/0"}) {
		t.Fatalf("before audit/25: %v, %v", keys(p.Records), err)
	}
	// A lowest key, in both directions.
	p, err = b.List(ctx, storage.Range{Prefix: "audit/", Reverse: true, After: "audit/4", From: "audit/15"})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/3", "audit/2"}) || p.More {
		t.Fatalf("before audit/4 from audit/15: %v more=%v, %v", keys(p.Records), p.More, err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "audit/", Reverse: true, Limit: 1, From: "audit/3"})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/4"}) || !p.More {
		t.Fatalf("newest one from audit/3: %v more=%v, %v", keys(p.Records), p.More, err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "audit/", From: "audit/3"})
	if err != nil || !slices.Equal(keys(p.Records), []string{"audit/3", "audit/4"}) {
		t.Fatalf("from audit/3: %v, %v", keys(p.Records), err)
	}
}

// Keys may hold any bytes after the kind: the audit trail's keys are
// big-endian times.
func testListBinaryKeys(t *testing.T, b storage.Backend) {
	ks := []string{"audit/\x00\x00", "audit/\x00\xff", "audit/\x7f\x00", "audit/\xff\x00", "audit/\xff\xff"}
	for _, k := range ks {
		put(t, b, k, "e")
	}
	p, err := b.List(ctx, storage.Range{Prefix: "audit/"})
	if err != nil || !slices.Equal(keys(p.Records), ks) {
		t.Fatalf("binary keys: %q, %v", keys(p.Records), err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "audit/\xff"})
	if err != nil || !slices.Equal(keys(p.Records), ks[3:]) {
		t.Fatalf("prefix audit/\\xff: %q, %v", keys(p.Records), err)
	}
	p, err = b.List(ctx, storage.Range{Prefix: "audit/\xff", Reverse: true})
	if err != nil || !slices.Equal(keys(p.Records), []string{ks[4], ks[3]}) {
		t.Fatalf("prefix audit/\\xff reversed: %q, %v", keys(p.Records), err)
	}
}

func testLimits(t *testing.T, b storage.Backend) {
	l := b.Limits()
	if l.MaxOps < storage.EtcdLimits.MaxOps || l.MaxBytes < 64<<10 {
		t.Fatalf("limits %+v: too small for the broker's records", l)
	}
	var ops []storage.Op
	for i := range l.MaxOps + 1 {
		ops = append(ops, storage.Put(fmt.Sprintf("audit/%05d", i), []byte("e")))
	}
	if _, err := b.Txn(ctx, nil, ops); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("%d ops: %v, want ErrTooLarge", len(ops), err)
	}
	if _, err := b.Txn(ctx, nil, ops[:l.MaxOps]); err != nil {
		t.Fatalf("%d ops: %v", l.MaxOps, err)
	}
	if n, err := b.Count(ctx, "audit/"); err != nil || n != int64(l.MaxOps) {
		t.Fatalf("count: %d, %v, want %d", n, err, l.MaxOps)
	}
	if n, err := b.Count(ctx, "audit/0000"); err != nil || n != min(10, int64(l.MaxOps)) {
		t.Fatalf("count of audit/0000: %d, %v", n, err)
	}
	if n, err := b.Count(ctx, "nothing/"); err != nil || n != 0 {
		t.Fatalf("count of an empty kind: %d, %v", n, err)
	}
	big := storage.Put("accounts/big", make([]byte, l.MaxBytes))
	if _, err := b.Txn(ctx, nil, []storage.Op{big}); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("%d bytes: %v, want ErrTooLarge", l.MaxBytes, err)
	}
	if _, err := b.Get(ctx, "accounts/big"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a refused txn wrote: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := b.Txn(cancelled, nil, []storage.Op{storage.Put("accounts/c", nil)}); !errors.Is(err, context.Canceled) {
		t.Fatalf("txn with a cancelled context: %v", err)
	}
}

func testRevisions(t *testing.T, b storage.Backend) {
	r1 := put(t, b, "accounts/a", "1")
	r2 := put(t, b, "accounts/b", "2")
	if r2 <= r1 {
		t.Fatalf("revisions %d then %d", r1, r2)
	}
	p, err := b.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil || p.Revision < r2 {
		t.Fatalf("list at revision %d after a commit at %d (%v)", p.Revision, r2, err)
	}
	if _, err := b.Txn(ctx, []storage.Cond{storage.Exists("accounts/none")}, []storage.Op{storage.Put("accounts/c", nil)}); !errors.Is(err, storage.ErrConflict) {
		t.Fatal(err)
	}
	if r3 := put(t, b, "accounts/c", "3"); r3 <= r2 {
		t.Fatalf("revision %d after %d", r3, r2)
	}
}

func next(t *testing.T, ch <-chan storage.Change) storage.Change {
	t.Helper()
	select {
	case c, ok := <-ch:
		if !ok {
			t.Fatal("the watch ended")
		}
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no change within 10s")
	}
	return storage.Change{}
}

func testWatch(t *testing.T, b storage.Backend) {
	put(t, b, "accounts/before", "x")
	p, err := b.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := b.Watch(wctx, "accounts/", p.Revision)
	put(t, b, "audit/1", "not watched")
	rev := put(t, b, "accounts/a", "1", "audit/2", "not watched", "accounts/b", "2")
	del, err := b.Txn(ctx, nil, []storage.Op{storage.Delete("accounts/a")})
	if err != nil {
		t.Fatal(err)
	}
	c := next(t, ch)
	if c.Err != nil || c.Revision != rev || len(c.Events) != 2 {
		t.Fatalf("first change: %+v, want the two accounts at revision %d", c, rev)
	}
	a, bb := c.Events[0], c.Events[1]
	if a.Key != "accounts/a" || string(a.Value) != "1" || a.Deleted || bb.Key != "accounts/b" || string(bb.Value) != "2" {
		t.Fatalf("events %+v", c.Events)
	}
	if r := mustGet(t, b, "accounts/b"); r.Version != bb.Version {
		t.Fatalf("event version %d, record version %d", bb.Version, r.Version)
	}
	c = next(t, ch)
	if c.Err != nil || c.Revision != del || len(c.Events) != 1 || !c.Events[0].Deleted || c.Events[0].Key != "accounts/a" || c.Events[0].Value != nil {
		t.Fatalf("deletion: %+v", c)
	}
	// A second watcher from the same revision sees the same changes.
	ch2 := b.Watch(wctx, "accounts/b", p.Revision)
	if c := next(t, ch2); c.Revision != rev || len(c.Events) != 1 || c.Events[0].Key != "accounts/b" {
		t.Fatalf("second watcher: %+v", c)
	}
}

func testWatchEnds(t *testing.T, b storage.Backend) {
	wctx, cancel := context.WithCancel(ctx)
	p, err := b.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil {
		t.Fatal(err)
	}
	ch := b.Watch(wctx, "accounts/", p.Revision)
	cancel()
	select {
	case _, ok := <-ch:
		for ok {
			_, ok = <-ch
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a cancelled watch was not closed within 10s")
	}
	ch = b.Watch(ctx, "accounts/", p.Revision)
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	var last storage.Change
	for c := range ch {
		last = c
	}
	if !errors.Is(last.Err, storage.ErrClosed) {
		t.Fatalf("the watch of a closed engine ended with %+v, want ErrClosed", last)
	}
}

// Writes to a log kind are stored and read like any other, but no watcher
// is sent them; a transaction that also writes other records is sent
// with those alone.
func testLogsAreNotWatched(t *testing.T, b storage.Backend) {
	p, err := b.List(ctx, storage.Range{Prefix: "accounts/"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := b.Watch(wctx, "", p.Revision)
	both := put(t, b, "accounts/a", "1", "audit/1", "e1")
	put(t, b, "audit/2", "e2")
	last := put(t, b, "accounts/b", "2")
	if c := next(t, ch); c.Revision != both || len(c.Events) != 1 || c.Events[0].Key != "accounts/a" {
		t.Fatalf("first change: %+v, want accounts/a alone at %d", c, both)
	}
	if c := next(t, ch); c.Revision != last || len(c.Events) != 1 || c.Events[0].Key != "accounts/b" {
		t.Fatalf("second change: %+v, want accounts/b at %d", c, last)
	}
	logs, err := b.List(ctx, storage.Range{Prefix: "audit/"})
	if err != nil || !slices.Equal(keys(logs.Records), []string{"audit/1", "audit/2"}) {
		t.Fatalf("the log's records: %v (%v)", keys(logs.Records), err)
	}
	if n, err := b.Count(ctx, "audit/"); err != nil || n != 2 {
		t.Fatalf("count of the log: %d (%v)", n, err)
	}
	if r := mustGet(t, b, "audit/2"); string(r.Value) != "e2" {
		t.Fatalf("audit/2 = %q", r.Value)
	}
}
