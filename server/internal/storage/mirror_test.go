package storage_test

import (
	"context"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// brokenOnce is an engine whose first watch breaks at once, as one that
// fell too far behind does.
type brokenOnce struct {
	*boltdb.DB
	broken atomic.Bool
}

func (b *brokenOnce) Watch(ctx context.Context, prefix string, after storage.Revision) <-chan storage.Change {
	if b.broken.CompareAndSwap(false, true) {
		ch := make(chan storage.Change, 1)
		ch <- storage.Change{Revision: after, Err: storage.ErrCompacted}
		close(ch)
		return ch
	}
	return b.DB.Watch(ctx, prefix, after)
}

// A mirror applies every commit in order, lets a writer wait for its own,
// and reads afresh when the stream breaks.
func TestMirror(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	db, err := boltdb.Open(filepath.Join(t.TempDir(), "db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	engine := &brokenOnce{DB: db}
	var mu sync.Mutex
	copies := map[string]string{}
	loads := 0
	load := func(context.Context) (storage.Revision, error) {
		p, err := db.List(ctx, storage.Range{Prefix: "k/"})
		if err != nil {
			return 0, err
		}
		mu.Lock()
		defer mu.Unlock()
		loads++
		clear(copies)
		for _, r := range p.Records {
			copies[r.Key] = string(r.Value)
		}
		return p.Revision, nil
	}
	apply := func(c storage.Change) {
		mu.Lock()
		defer mu.Unlock()
		for _, ev := range c.Events {
			if ev.Deleted {
				delete(copies, ev.Key)
			} else {
				copies[ev.Key] = string(ev.Value)
			}
		}
	}
	put := func(k, v string) storage.Revision {
		rev, err := db.Txn(ctx, nil, []storage.Op{storage.Put(k, []byte(v))})
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	put("k/a", "1")
	rev, err := load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := storage.NewMirror(storage.MirrorConfig{Backend: engine, Load: load, Apply: apply, RetryInterval: time.Millisecond}, rev)
	put("k/b", "2") // committed before Run: the reload after the broken watch brings it
	go m.Run(ctx)
	put("k/a", "3")
	if _, err := db.Txn(ctx, nil, []storage.Op{storage.Delete("k/b")}); err != nil {
		t.Fatal(err)
	}
	last := put("k/c", "4")
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := m.Wait(wctx, last); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(copies) != 2 || copies["k/a"] != "3" || copies["k/c"] != "4" || loads != 2 {
		t.Fatalf("copies %v after %d loads, want a=3 c=4 after 2", copies, loads)
	}
	if m.Applied() < last {
		t.Fatalf("applied %d, want at least %d", m.Applied(), last)
	}
}
