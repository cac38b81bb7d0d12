// Package audit keeps the audit trail. Record makes an event durable before
// it returns; concurrent calls share one fsync (group commit), so waiting
// for the disk costs each caller one commit, not a queue of them. On bbolt the
// commit is a write to the audit journal (JournalSink), indexed into the
// database in the background. Events of admin changes are written by the
// store in the same transaction as the change. Old events are pruned by
// age and count.
package audit

import (
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/grpcerr"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// ErrClosed means the trail has stopped: the event was not written.
var ErrClosed = errors.New("audit trail is closed")

// Sink is where events go: the store, or a stand-in in tests.
type Sink interface {
	AppendAudit([]store.AuditEvent) error
}

// Store is what the trail needs of the storage to list and prune events.
// *store.Store provides it on any storage engine.
type Store interface {
	ScanAudit(before store.AuditPos, fn func(store.AuditPos, store.AuditEvent) bool) error
	PruneAudit(cutoff time.Time, keep, limit int, expendable func(store.AuditEvent) bool) (int, error)
}

// Config tunes the trail. Zero values take the defaults of DefaultConfig.
type Config struct {
	// MaxAge: older events are deleted. Default 365 days.
	MaxAge time.Duration
	// MaxEvents: the oldest events beyond this many are deleted, of those
	// that Expendable accepts. Default 1,000,000.
	MaxEvents int
	// Expendable says which events pruning by count may delete; the others
	// are deleted by age only (MaxAge), so that no volume of calls can push
	// them out. Default: every event.
	Expendable func(store.AuditEvent) bool
	// PruneInterval is how often old events are deleted. Default 1m.
	PruneInterval time.Duration
	// Flush, if set, makes every event recorded so far listable: the
	// journal's, indexed (JournalSink.Flush). List calls it first.
	Flush func() error
	// JournalSegmentSize is the size of the audit journal's segments, on
	// bbolt (see JournalSink). Default: journal.DefaultSegmentSize.
	JournalSegmentSize int64
	Now                func() time.Time
	Logger             *slog.Logger
}

// DefaultConfig is the configuration New uses for zero fields.
func DefaultConfig() Config {
	return Config{
		MaxAge:        365 * 24 * time.Hour,
		MaxEvents:     1_000_000,
		PruneInterval: time.Minute,
		Now:           time.Now,
		Logger:        slog.Default(),
	}
}

// Log is the audit trail. Create it with New and run its writer with Run.
type Log struct {
	cfg   Config
	sink  Sink
	store Store

	mu      sync.Mutex
	open    *batch         // collecting events while a commit is under way
	last    int            // how many events the last batch closed held
	writing bool           // a commit is under way, by the writer or a caller (Record)
	leaders sync.WaitGroup // callers committing their own batch
	closed  bool
	wake    chan struct{} // tells the writer a batch is waiting
	done    chan struct{} // closed when Run has returned

	failing atomic.Bool // the last commit failed
}

// Failing reports whether the last commit failed, for callers that can only
// record their event after acting (the egress proxy) and so must check
// before they act.
func (l *Log) Failing() bool { return l.failing.Load() }

// batch is the events of one commit. Its callers wait on done, closed once
// for all of them.
type batch struct {
	events []store.AuditEvent
	done   chan struct{}
	err    error
}

// New returns a trail that appends to sink and reads and prunes st.
func New(cfg Config, sink Sink, st Store) *Log {
	d := DefaultConfig()
	if cfg.MaxAge <= 0 {
		cfg.MaxAge = d.MaxAge
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = d.MaxEvents
	}
	if cfg.PruneInterval <= 0 {
		cfg.PruneInterval = d.PruneInterval
	}
	if cfg.Now == nil {
		cfg.Now = d.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = d.Logger
	}
	return &Log{cfg: cfg, sink: sink, store: st, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Record appends evs and returns once they are on disk, or with the error
// that kept them off. The caller must not answer its own caller before then.
// When no commit is under way the caller commits its batch itself, which
// spares it the writer's wake-up; otherwise its events join the next
// batch, which the writer commits when the one under way is done.
func (l *Log) Record(evs ...store.AuditEvent) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	b := l.open
	if b == nil {
		// Room for as many as the batch before: at 500 callers a batch
		// holds about 30 events, and growing it copied them six times.
		b = &batch{events: make([]store.AuditEvent, 0, max(l.last, len(evs))), done: make(chan struct{})}
		l.open = b
	}
	b.events = append(b.events, evs...)
	if !l.writing {
		l.writing, l.open, l.last = true, nil, len(b.events)
		l.leaders.Add(1)
		l.mu.Unlock()
		l.commit(b)
		l.doneWriting()
		l.leaders.Done()
		return b.err
	}
	l.mu.Unlock()
	<-b.done
	return b.err
}

// doneWriting ends a commit; if events came meanwhile, the writer commits
// them next.
func (l *Log) doneWriting() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writing = false
	if l.open != nil {
		select {
		case l.wake <- struct{}{}:
		default: // the writer has been told already
		}
	}
}

// Run commits the batches that form while a commit is under way, and
// prunes old events, until ctx ends. Events recorded by then are still
// written; later ones fail. A batch is whatever came during the commit
// before it, written at once: waiting for more saved no measurable CPU
// even at 500 callers, whose events come in bursts that batch themselves,
// and cost each caller the wait.
func (l *Log) Run(ctx context.Context) {
	defer close(l.done)
	l.prune()
	tick := time.NewTicker(l.cfg.PruneInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			l.mu.Lock()
			l.closed = true
			l.mu.Unlock()
			l.leaders.Wait()
			l.commit(l.take())
			return
		case <-tick.C:
			l.prune()
		case <-l.wake:
			l.mu.Lock()
			start := !l.writing && l.open != nil
			l.writing = l.writing || start
			l.mu.Unlock()
			if start {
				l.commit(l.take())
				l.doneWriting()
			}
		}
	}
}

// take hands the writer the batch collected so far; new events start the next.
func (l *Log) take() *batch {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.open
	l.open = nil
	if b != nil {
		l.last = len(b.events)
	}
	return b
}

func (l *Log) commit(b *batch) {
	if b == nil {
		return
	}
	b.err = l.sink.AppendAudit(b.events)
	l.failing.Store(b.err != nil)
	if b.err != nil {
		l.cfg.Logger.Error("could not write audit events; their calls fail", "events", len(b.events), "error", b.err)
	}
	close(b.done)
}

// pruneStep bounds one pruning transaction.
const pruneStep = 10_000

func (l *Log) prune() {
	cutoff := l.cfg.Now().Add(-l.cfg.MaxAge)
	for {
		n, err := l.store.PruneAudit(cutoff, l.cfg.MaxEvents, pruneStep, l.cfg.Expendable)
		if err != nil {
			l.cfg.Logger.Error("could not prune the audit trail", "error", err)
			return
		}
		if n < pruneStep {
			return
		}
	}
}

// Flush makes every event recorded so far listable, and part of a backup.
func (l *Log) Flush() error {
	if l.cfg.Flush == nil {
		return nil
	}
	return l.cfg.Flush()
}

// Query selects events. Zero fields match everything.
type Query struct {
	Resource  string
	Principal string
	// Start (inclusive) and End (exclusive) bound the event time.
	Start, End time.Time
	// Before continues a listing: only events stored before this position.
	Before store.AuditPos
	Limit  int
}

// List returns up to q.Limit matching events, newest first, and the
// position to continue from if more may follow (zero otherwise).
func (l *Log) List(q Query) ([]store.AuditEvent, store.AuditPos, error) {
	if err := l.Flush(); err != nil {
		return nil, store.AuditPos{}, err
	}
	from := q.Before
	if !q.End.IsZero() && (from.Time.IsZero() || q.End.Before(from.Time)) {
		from = store.AuditPos{Time: q.End}
	}
	var (
		out        []store.AuditEvent
		last, next store.AuditPos
	)
	err := l.store.ScanAudit(from, func(pos store.AuditPos, ev store.AuditEvent) bool {
		if !q.Start.IsZero() && pos.Time.Before(q.Start) {
			return false
		}
		if (q.Resource != "" && ev.Resource != q.Resource) || (q.Principal != "" && ev.Principal != q.Principal) {
			return true
		}
		if len(out) == q.Limit {
			next = last // a further match exists: continue after the last one shown
			return false
		}
		out = append(out, ev)
		last = pos
		return true
	})
	return out, next, err
}

// Fingerprint names a token in the audit trail without revealing it.
func Fingerprint(mac *keyring.MACKey, token string) string {
	return "hmac-sha256:" + hex.EncodeToString(mac.Sum("token-fingerprint", token))
}

// ErrNotForwarded refuses an egress-proxy call while the trail cannot be
// written: such a call is audited when it ends, so it is not made at all.
var ErrNotForwarded = grpcerr.WithReason(codes.Unavailable, credbrokerv1.ErrorReason_AUDIT_UNAVAILABLE,
	"the audit trail cannot be written, so the call was not forwarded; see the server log")
