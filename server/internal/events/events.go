// Package events delivers credential events (see store.Event). Each is
// stored in the outbox by the change it describes; the relay, which one
// process of a cluster runs at a time, moves them into the event log in
// order and numbers them; and watchers read the log from any number on,
// woken as it grows.
package events

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Config configures the events.
type Config struct {
	// Retention is how long the log keeps an event: a watcher can resume
	// after an event for as long. Default DefaultRetention.
	Retention time.Duration
	// Progress is how often a watch whose filters pass no event is told
	// its position all the same. Default 30 s.
	Progress time.Duration
	// Logger: default slog.Default().
	Logger *slog.Logger
}

// DefaultRetention is the default Config.Retention.
const DefaultRetention = 7 * 24 * time.Hour

// Service relays events and lets watchers read them.
type Service struct {
	cfg   Config
	store *store.Store

	mu sync.Mutex
	// grown is closed, and replaced, when the log may have grown.
	grown chan struct{}
	// outboxed wakes the relay.
	outboxed chan struct{}
	// draining ends the watches (see Drain).
	draining     chan struct{}
	drainingOnce sync.Once
}

// New returns the events of st.
func New(cfg Config, st *store.Store) *Service {
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.Progress <= 0 {
		cfg.Progress = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Service{cfg: cfg, store: st, grown: make(chan struct{}), outboxed: make(chan struct{}, 1), draining: make(chan struct{})}
}

// Noticed is told of every committed change to the outbox or the log, by
// whichever process made it (the mirror's stream of changes).
func (s *Service) Noticed(kind string) {
	switch kind {
	case store.KindEventOutbox:
		select {
		case s.outboxed <- struct{}{}:
		default:
		}
	case store.KindEvents:
		s.mu.Lock()
		close(s.grown)
		s.grown = make(chan struct{})
		s.mu.Unlock()
	}
}

// Grown is closed when the log may have grown since the call.
func (s *Service) Grown() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.grown
}

// relayPoll is how often the relay looks at the outbox unwoken (a change
// missed while the mirror reloaded), and how often a watcher reads the log.
const relayPoll = 5 * time.Second

// pruneEvery is how often the relay deletes events older than Retention:
// a quarter of it, within a minute and an hour.
func (s *Service) pruneEvery() time.Duration {
	return min(time.Hour, max(time.Minute, s.cfg.Retention/4))
}

// Run relays events until ctx ends, while this process holds the relay's
// lock (on an engine replicas share, one process at a time does).
func (s *Service) Run(ctx context.Context) {
	WhileHolding(ctx, s.store, "event-relay", s.cfg.Logger, s.relay)
}

// WhileHolding runs run while this process holds the named lock (see
// store.Lock), its writes conditioned on the lock, until ctx ends: run
// returns when ctx ends, or with an error when it lost the lock or failed;
// the lock is then taken again, a second later.
func WhileHolding(ctx context.Context, st *store.Store, name string, log *slog.Logger, run func(context.Context, []storage.Cond) error) {
	for ctx.Err() == nil {
		lock, err := st.Lock(ctx, name)
		if err == nil {
			err = run(ctx, store.Holds(lock))
			switch {
			case lock.Unlock == nil:
			case ctx.Err() != nil:
				// Stopping: the lock also goes with the process's lease,
				// which its storage ends when it closes; unlocking must
				// not hold up a stop whose storage is out of reach.
				go lock.Unlock()
			default:
				lock.Unlock()
			}
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("a job that one process runs at a time stopped; it starts again", "job", name, "error", err)
			Sleep(ctx, time.Second)
		}
	}
}

// relay moves what the outbox holds into the log, whenever woken, until
// ctx ends or the lock is lost.
func (s *Service) relay(ctx context.Context, holds []storage.Cond) error {
	poll := time.NewTicker(relayPoll)
	defer poll.Stop()
	var pruned time.Time
	for {
		if err := s.RelayAll(holds); errors.Is(err, storage.ErrConflict) {
			return errors.New("the relay's lock was lost")
		} else if err != nil {
			s.cfg.Logger.Error("could not relay credential events; retrying", "error", err)
		}
		if time.Since(pruned) >= s.pruneEvery() {
			if err := s.prune(); err != nil {
				s.cfg.Logger.Error("could not delete old credential events", "error", err)
			}
			pruned = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-s.outboxed:
		case <-poll.C:
		}
	}
}

// RelayAll moves every event in the outbox into the log, in transactions
// that hold only while holds do.
func (s *Service) RelayAll(holds []storage.Cond) error {
	for {
		n, err := s.store.RelayEvents(holds)
		if errors.Is(err, store.ErrIntegrity) {
			s.cfg.Logger.Error("dropped a credential event whose outbox record failed its integrity check", "error", err)
		} else if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
	}
}

// prune deletes the events older than Retention.
func (s *Service) prune() error {
	cutoff := time.Now().Add(-s.cfg.Retention)
	for {
		n, err := s.store.PruneEvents(cutoff, 1000)
		if err != nil || n < 1000 {
			return err
		}
	}
}

// ErrDraining ends the watches of a broker that is shutting down.
var ErrDraining = errors.New("the broker is shutting down")

// Drain ends every watch, now and to come, with ErrDraining: a broker that
// shuts down waits for its calls to end, and watches do not end by
// themselves.
func (s *Service) Drain() { s.drainingOnce.Do(func() { close(s.draining) }) }

// ErrExpired: a watcher asked to resume after an event older than the log
// keeps.
var ErrExpired = errors.New("the events after this position are no longer kept")

// ErrAhead: a watcher asked to resume after an event the log has not had.
var ErrAhead = errors.New("the log has no event at this position")

// Newest is the sequence number of the newest event, where a watcher that
// wants only new events starts.
func (s *Service) Newest() (uint64, error) {
	_, newest, err := s.store.EventLog()
	return newest, err
}

// Watch calls send with the events after sequence number after, in order,
// a page at a time, and then with each new page the log gets, until ctx
// ends or send fails. send says whether it passed any of them on (a
// watcher may filter them); after Config.Progress without that, Watch
// calls it with no event (nil), so that the watcher can send its position
// on.
func (s *Service) Watch(ctx context.Context, after uint64, send func([]store.Event) (bool, error)) error {
	idle := s.cfg.Progress
	oldest, newest, err := s.store.EventLog()
	switch {
	case err != nil:
		return err
	case after > newest:
		return ErrAhead
	case after+1 < oldest:
		return ErrExpired
	}
	poll := time.NewTicker(relayPoll)
	defer poll.Stop()
	quiet := time.NewTimer(idle)
	defer quiet.Stop()
	for {
		grown := s.Grown() // before the read: growth after it wakes us
		evs, more, err := s.store.Events(after, 100)
		if err != nil {
			return err
		}
		if len(evs) > 0 && evs[0].Seq > after+1 {
			return ErrExpired // deleted (Retention) while the watcher read the ones before
		}
		if len(evs) > 0 {
			sent, err := send(evs)
			if err != nil {
				return err
			}
			after = evs[len(evs)-1].Seq
			if sent {
				quiet.Reset(idle)
			}
			if more {
				continue
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.draining:
			return ErrDraining
		case <-grown:
		case <-poll.C:
		case <-quiet.C:
			if _, err := send(nil); err != nil {
				return err
			}
			quiet.Reset(idle)
		}
	}
}

// Sleep waits for d, or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
