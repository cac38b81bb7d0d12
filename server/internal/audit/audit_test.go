package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// countingSink counts commits and, while slow, holds each one long enough
// for concurrent callers to pile up behind it.
type countingSink struct {
	st      *store.Store
	commits atomic.Int64
	fail    atomic.Bool
}

func (c *countingSink) AppendAudit(evs []store.AuditEvent) error {
	c.commits.Add(1)
	if c.fail.Load() {
		return errors.New("disk full")
	}
	time.Sleep(2 * time.Millisecond)
	return c.st.AppendAudit(evs)
}

func newLog(t *testing.T) (*Log, *countingSink, *store.Store, context.CancelFunc) {
	t.Helper()
	st := openStore(t)
	t.Cleanup(func() { st.Close() })
	sink := &countingSink{st: st}
	l := New(Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, sink, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return l, sink, st, cancel
}

func stored(t *testing.T, st *store.Store) map[string]bool {
	t.Helper()
	seen := map[string]bool{}
	if err := st.ScanAudit(store.AuditPos{}, func(_ store.AuditPos, ev store.AuditEvent) bool {
		seen[ev.Resource] = true
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return seen
}

// Concurrent Record calls share commits, and each returns only once its
// own event is in the store.
func TestRecordGroupCommits(t *testing.T) {
	l, sink, st, _ := newLog(t)
	const calls = 200
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := store.AuditEvent{Time: time.Now(), Resource: fmt.Sprintf("r%d", i), Code: "OK"}
			if err := l.Record(ev); err != nil {
				t.Error(err)
				return
			}
			if !stored(t, st)[ev.Resource] {
				t.Errorf("Record returned before %s was stored", ev.Resource)
			}
		}()
	}
	wg.Wait()
	if n := len(stored(t, st)); n != calls {
		t.Fatalf("%d events stored, want %d", n, calls)
	}
	if c := sink.commits.Load(); c >= calls/2 {
		t.Fatalf("%d commits for %d concurrent events: no group commit", c, calls)
	}
	t.Logf("%d events in %d commits", calls, sink.commits.Load())
}

func TestRecordReportsWriteFailure(t *testing.T) {
	l, sink, st, _ := newLog(t)
	sink.fail.Store(true)
	if err := l.Record(store.AuditEvent{Time: time.Now(), Resource: "lost"}); err == nil {
		t.Fatal("Record succeeded although the write failed")
	}
	if stored(t, st)["lost"] {
		t.Fatal("the failed event was stored")
	}
}

func TestRecordAfterStopFails(t *testing.T) {
	l, _, _, cancel := newLog(t)
	cancel()
	<-l.done
	if err := l.Record(store.AuditEvent{Time: time.Now()}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Record after stop = %v, want ErrClosed", err)
	}
}

// Pruning deletes by age and by count, oldest first.
func TestPrune(t *testing.T) {
	st := openStore(t)
	defer st.Close()
	now := time.Now()
	var evs []store.AuditEvent
	for i := range 10 {
		evs = append(evs, store.AuditEvent{Time: now.Add(time.Duration(i-10) * time.Hour), Resource: fmt.Sprintf("r%d", i)})
	}
	if err := st.AppendAudit(evs); err != nil {
		t.Fatal(err)
	}
	l := New(Config{MaxAge: 5*time.Hour + time.Minute, MaxEvents: 3, Now: func() time.Time { return now }}, st, st)
	l.prune()
	got := stored(t, st)
	if len(got) != 3 || !got["r9"] || !got["r8"] || !got["r7"] {
		t.Fatalf("after pruning to 3: %v", got)
	}
	l = New(Config{MaxAge: 2*time.Hour + time.Minute, MaxEvents: 100, Now: func() time.Time { return now }}, st, st)
	l.prune()
	if got := stored(t, st); len(got) != 2 || got["r7"] {
		t.Fatalf("after pruning by age: %v", got)
	}
}

// openStore opens a new store with a random master key's record key.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	text, _ := keyring.GenerateMasterKey()
	master, _ := keyring.ParseMasterKey(text)
	if _, err := st.Authenticate(keyring.NewMasters(master), false, store.AuditEvent{}); err != nil {
		t.Fatal(err)
	}
	return st
}

// A JournalSink's events are durable when AppendAudit returns and
// listable after Flush; those of a process that died before indexing them
// are indexed by the next, once, at the places they were given.
func TestJournalSink(t *testing.T) {
	st := openStore(t)
	defer st.Close()
	text, _ := keyring.GenerateMasterKey()
	master, _ := keyring.ParseMasterKey(text)
	mac, _, err := master.NewMACKey()
	if err != nil {
		t.Fatal(err)
	}
	dir, quiet := filepath.Join(t.TempDir(), "journal"), slog.New(slog.NewTextHandler(io.Discard, nil))
	js, err := OpenJournal(dir, mac, st, 64<<10, quiet)
	if err != nil {
		t.Fatal(err)
	}
	l := New(Config{Logger: quiet, Flush: js.Flush}, js, st)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := range 5 {
		if err := l.Record(store.AuditEvent{Time: time.Now(), Resource: fmt.Sprintf("indexed-%d", i), Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	if got := stored(t, st); len(got) != 0 {
		t.Fatalf("indexed before a flush: %v", got)
	}
	if evs, _, err := l.List(Query{Limit: 10}); err != nil || len(evs) != 5 {
		t.Fatalf("List: %d events, %v", len(evs), err)
	}
	for i := range 3 {
		if err := l.Record(store.AuditEvent{Time: time.Now(), Resource: fmt.Sprintf("journaled-%d", i), Code: "OK"}); err != nil {
			t.Fatal(err)
		}
	}
	// The process dies here: the sink is never flushed or closed. The next
	// one indexes what the journal holds, and leaves it empty; had it died
	// before removing it, the one after would store the same events again
	// at the same places.
	copied := filepath.Join(t.TempDir(), "left")
	if err := os.CopyFS(copied, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenJournal(dir, mac, st, 64<<10, quiet); err != nil {
		t.Fatal(err)
	}
	if got := stored(t, st); len(got) != 8 || !got["journaled-2"] {
		t.Fatalf("after recovery: %v", got)
	}
	if entries, _ := os.ReadDir(dir); len(entries) > 2 { // the new sink's current and spare segments
		t.Fatalf("the journal after recovery: %v", entries)
	}
	if err := os.CopyFS(dir, os.DirFS(copied)); err != nil {
		t.Fatal(err)
	}
	if err := RecoverJournal(dir, mac, st, quiet); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := st.ScanAudit(store.AuditPos{}, func(store.AuditPos, store.AuditEvent) bool { n++; return true }); err != nil || n != 8 {
		t.Fatalf("%d events stored after recovering twice (%v), want 8", n, err)
	}
}
