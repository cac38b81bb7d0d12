package server

import (
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/store"
)

// FailAuditWrites makes every group-committed audit write fail with err
// while fail is set, as a full or broken disk would.
func FailAuditWrites(cfg *Config, fail *atomic.Bool, err error) {
	cfg.wrapAuditSink = func(s audit.Sink) audit.Sink { return failingSink{s, fail, err} }
}

type failingSink struct {
	audit.Sink
	fail *atomic.Bool
	err  error
}

func (f failingSink) AppendAudit(evs []store.AuditEvent) error {
	if f.fail.Load() {
		return f.err
	}
	return f.Sink.AppendAudit(evs)
}

// OpenStore opens a stopped broker's database with its master key, as the
// broker does, for tests that change records the way an admin holding the
// key could.
func OpenStore(cfg Config) (*store.Store, error) {
	master, err := datadir.ConfiguredMasters(cfg.Config)
	if err != nil {
		return nil, err
	}
	st, _, err := datadir.Open(cfg.Config, master)
	return st, err
}

// ShortenAuditIntervals makes the tallies of calls without valid
// credentials become audit events every refusals, and old events be pruned
// every prune.
func ShortenAuditIntervals(cfg *Config, refusals, prune time.Duration) {
	cfg.Gate.RefusalInterval, cfg.Audit.PruneInterval = refusals, prune
}

// StoreOf is a running broker's store, for tests that commit changes past
// its services, as another process on the same storage would.
func StoreOf(s *Server) *store.Store { return s.store }

// SweepConnectLinks runs the connect links' expiry check now, as the
// broker does every minute.
func SweepConnectLinks(s *Server) error { return s.links.Sweep() }
