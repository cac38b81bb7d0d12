package boltdb

import (
	"context"
	"sync"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// history keeps the latest committed changes, in commit order, for
// watchers, and wakes them when one is added. A commit that wrote logs
// only is kept as a change without events, which no watcher is sent.
type history struct {
	mu      sync.Mutex
	changes []storage.Change // consecutive revisions, the oldest first
	bytes   int
	// last is the latest committed revision.
	last   storage.Revision
	wake   chan struct{} // closed and replaced when a change is added
	closed bool
}

func (h *history) start(rev storage.Revision) {
	h.last, h.wake = rev, make(chan struct{})
}

func size(c storage.Change) int {
	n := 64
	for _, ev := range c.Events {
		n += 64 + len(ev.Key) + len(ev.Value)
	}
	return n
}

// add appends the change that was just committed. Past MaxHistoryBytes it
// drops the oldest changes down to three quarters of it, so that each
// commit pays for dropping only now and then, not on every call.
func (h *history) add(c storage.Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.changes = append(h.changes, c)
	h.bytes += size(c)
	h.last = c.Revision
	if h.bytes > MaxHistoryBytes {
		drop := 0
		for h.bytes > MaxHistoryBytes*3/4 && drop < len(h.changes)-1 {
			h.bytes -= size(h.changes[drop])
			drop++
		}
		h.changes = append([]storage.Change(nil), h.changes[drop:]...)
	}
	close(h.wake)
	h.wake = make(chan struct{})
}

func (h *history) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.closed {
		h.closed = true
		close(h.wake)
	}
}

// since returns the kept changes after rev, and a channel that is closed
// when there are more; or ErrCompacted if changes after rev are no longer
// kept, or ErrClosed.
func (h *history) since(rev storage.Revision) ([]storage.Change, <-chan struct{}, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, nil, storage.ErrClosed
	}
	if rev >= h.last {
		return nil, h.wake, nil
	}
	oldest := h.last + 1
	if len(h.changes) > 0 {
		oldest = h.changes[0].Revision
	}
	if rev+1 < oldest {
		return nil, nil, storage.ErrCompacted
	}
	i := int(rev + 1 - oldest)
	return h.changes[i:len(h.changes):len(h.changes)], h.wake, nil
}

// follow sends the changes under prefix after rev to out until ctx ends
// or the stream fails, then closes out.
func (h *history) follow(ctx context.Context, prefix string, rev storage.Revision, out chan<- storage.Change) {
	defer close(out)
	for {
		changes, wake, err := h.since(rev)
		if err != nil {
			select {
			case out <- storage.Change{Revision: rev, Err: err}:
			case <-ctx.Done():
			}
			return
		}
		for _, c := range changes {
			if sent := filter(c, prefix); sent.Events != nil {
				select {
				case out <- sent:
				case <-ctx.Done():
					return
				}
			}
			rev = c.Revision
		}
		if len(changes) > 0 {
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return
		}
	}
}

// filter is c with only the events under prefix.
func filter(c storage.Change, prefix string) storage.Change {
	if prefix == "" {
		return c
	}
	out := storage.Change{Revision: c.Revision}
	for _, ev := range c.Events {
		if storage.Under(ev.Key, prefix) {
			out.Events = append(out.Events, ev)
		}
	}
	return out
}
