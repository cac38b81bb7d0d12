package tokens

import (
	"context"
	"time"
)

// Run renews tokens in the background until ctx ends, then waits for every
// upstream request in flight (those still waiting for their refresh lock
// give up), so the store can be closed after it returns.
func (m *Manager) Run(ctx context.Context) {
	defer m.runs.Wait()
	defer m.stop()
	tick := time.NewTicker(m.cfg.ScanInterval)
	defer tick.Stop()
	slots := make(chan struct{}, m.cfg.RefreshConcurrency)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		m.refreshDue(slots)
		m.checkExpiry()
	}
}

// refreshDue starts requests for accounts whose token is missing or due for
// renewal and whose gate is open, while refresher slots are free.
func (m *Manager) refreshDue(slots chan struct{}) {
	now := m.cfg.Now()
	for _, e := range m.all() {
		e.mu.Lock()
		start := !e.removed && !e.apiKey && e.inflight == nil && !now.Before(e.nextAttempt) &&
			(e.current.Load() == nil || !now.Before(e.refreshAt))
		if !start {
			e.mu.Unlock()
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			e.mu.Unlock()
			return // all slots busy; the next scan carries on
		}
		c := m.startLocked(e)
		e.mu.Unlock()
		go func() {
			<-c.done
			<-slots
		}()
	}
}
