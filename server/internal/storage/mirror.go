package storage

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Mirror keeps in-memory copies of records (the token cache, the grants,
// the caller keys) up to date from the stream of committed changes, so
// that every change reaches them in commit order, whichever process or
// call made it; and it lets a writer wait until the copies hold its own
// commit, so that a caller sees its write on its next call.
type Mirror struct {
	cfg MirrorConfig

	mu      sync.Mutex
	applied Revision
	wake    chan struct{} // closed and replaced when applied advances
	// current is when the copies last held every committed change (see
	// storage.Change.Current; a Load's start counts too), in Unix
	// nanoseconds: every call asks Lagging, so it takes no lock.
	current atomic.Int64
}

// MirrorConfig says what a Mirror follows and how it applies it.
type MirrorConfig struct {
	Backend Backend
	// Load reads the records afresh, replaces the copies with them, and
	// returns the revision of its (earliest) read. It runs when the stream
	// of changes broke (a watcher that fell too far
	// behind, an engine that restarted), so the copies are never left
	// stale.
	Load func(context.Context) (Revision, error)
	// Apply makes one committed change in the copies; it gets every
	// change, whatever its keys, and must do nothing with those it has
	// applied already (a change after the revision of one of Load's reads
	// but before another's comes again).
	Apply func(Change)
	// Logger is told when the stream breaks. Default slog.Default().
	Logger *slog.Logger
	// RetryInterval is the wait after a failed Load. Default 1s.
	RetryInterval time.Duration
	// MaxLag, if set, is how far behind the engine the copies may be
	// (judged by its progress reports) before Lagging says so: for an
	// engine that other processes write to, whose changes may reach this
	// one late (a paused process, a slow member).
	MaxLag time.Duration
}

// NewMirror returns a Mirror of copies that its owner loaded as of
// revision loaded; Run keeps them up to date from then on.
func NewMirror(cfg MirrorConfig, loaded Revision) *Mirror {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = time.Second
	}
	m := &Mirror{cfg: cfg, applied: loaded, wake: make(chan struct{})}
	m.current.Store(time.Now().UnixNano())
	return m
}

// Run applies changes until ctx ends.
func (m *Mirror) Run(ctx context.Context) {
	for ctx.Err() == nil {
		err := m.follow(ctx)
		if ctx.Err() != nil {
			return
		}
		m.cfg.Logger.Warn("the stream of committed changes broke; reading the records afresh", "error", err)
		for ctx.Err() == nil {
			started := time.Now()
			rev, err := m.cfg.Load(ctx)
			if err == nil {
				m.advance(rev, started)
				break
			}
			m.cfg.Logger.Error("could not read the records afresh; trying again", "error", err)
			select {
			case <-ctx.Done():
			case <-time.After(m.cfg.RetryInterval):
			}
		}
	}
}

// follow applies the changes after the applied revision until the stream
// ends, and returns why.
func (m *Mirror) follow(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for c := range m.cfg.Backend.Watch(wctx, "", m.Applied()) {
		if c.Err != nil {
			return c.Err
		}
		if len(c.Events) > 0 {
			m.cfg.Apply(c)
		}
		m.advance(c.Revision, c.Current)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("the watch ended")
}

func (m *Mirror) advance(rev Revision, current time.Time) {
	for at := current.UnixNano(); !current.IsZero(); {
		old := m.current.Load()
		if at <= old || m.current.CompareAndSwap(old, at) {
			break
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if rev > m.applied {
		m.applied = rev
		close(m.wake)
		m.wake = make(chan struct{})
	}
}

// Lagging reports whether the copies may be more than MaxLag behind the
// engine: no progress report has said otherwise for that long.
func (m *Mirror) Lagging() bool {
	return m.cfg.MaxLag > 0 && time.Since(time.Unix(0, m.current.Load())) > m.cfg.MaxLag
}

// Applied is the revision the copies are up to date with.
func (m *Mirror) Applied() Revision {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.applied
}

// Wait returns once the copies hold every change up to rev, or when ctx
// ends.
func (m *Mirror) Wait(ctx context.Context, rev Revision) error {
	for {
		m.mu.Lock()
		applied, wake := m.applied, m.wake
		m.mu.Unlock()
		if applied >= rev {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
