package tokens

import (
	"context"
	"time"
)

// Run renews tokens in the background until ctx ends, then waits for every
// upstream request in flight (those still waiting for their refresh lock
// give up), so the store can be closed after it returns. It looks for due
// work at once, then every ScanInterval.
func (m *Manager) Run(ctx context.Context) {
	defer m.runs.Wait()
	defer m.stop()
	tick := time.NewTicker(m.cfg.ScanInterval)
	defer tick.Stop()
	slots := make(chan struct{}, m.cfg.RefreshConcurrency)
	for {
		m.refreshDue(ctx, slots)
		m.checkExpiry()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// refreshDue starts requests for accounts whose token is missing or due for
// renewal and whose gate is open, at most RefreshConcurrency at a time: when
// every slot is busy it waits for one, so that a backlog (100,000 tokens
// fetched in the same minute fall due together) is worked through at the
// pace the provider answers rather than a few a scan.
func (m *Manager) refreshDue(ctx context.Context, slots chan struct{}) {
	now := m.cfg.Now()
	held := false // a slot taken for the next start
	defer func() {
		if held {
			<-slots
		}
	}()
	for _, e := range m.all() {
		if !held {
			select {
			case slots <- struct{}{}:
				held = true
			case <-ctx.Done():
				return
			}
		}
		e.mu.Lock()
		if e.removed || e.apiKey || e.inflight != nil || now.Before(e.readSetbacks().nextAttempt) ||
			(e.current.Load() != nil && now.Before(e.refreshAt)) {
			e.mu.Unlock()
			continue
		}
		c := m.startLocked(e)
		e.mu.Unlock()
		held = false
		go func() {
			<-c.done
			<-slots
		}()
	}
}
