package audit

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/credbroker/credbroker/server/internal/journal"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/store"
)

// Indexer is the storage a JournalSink indexes events into.
type Indexer interface {
	Sink
	NextAuditSeq() uint64
}

// JournalSink makes events durable in a journal, one write a batch, and
// indexes them into the store, where List finds them, in the background
// (Run) and whenever Flush is called. On bbolt, where a transaction costs
// two fsyncs and a B+tree's pages, this takes the trail's commits off the
// database: a batch costs one small write.
type JournalSink struct {
	journal  *journal.Journal
	st       Indexer
	log      *slog.Logger
	interval time.Duration

	mu      sync.Mutex         // serializes writes to the journal
	pending []store.AuditEvent // journaled, not yet indexed

	indexMu sync.Mutex        // one indexing at a time
	indexed []journal.Segment // cut, and held until their events are indexed
}

// IndexInterval is how often a JournalSink indexes what it journaled.
const IndexInterval = time.Second

// OpenJournal opens the journal in dir, indexes into st what an earlier
// process left in it (a crash's last events), and returns the sink that
// journals from now on.
func OpenJournal(dir string, mac *keyring.MACKey, st Indexer, segmentSize int64, log *slog.Logger) (*JournalSink, error) {
	if err := RecoverJournal(dir, mac, st, log); err != nil {
		return nil, err
	}
	j, err := journal.Open(dir, mac, segmentSize)
	if err != nil {
		return nil, err
	}
	return &JournalSink{journal: j, st: st, log: log, interval: IndexInterval}, nil
}

// RecoverJournal indexes into st the events left in the journal in dir,
// if any, and removes them from it: a broker that stopped cleanly left
// none. Tools that open a stopped broker's database call it first.
func RecoverJournal(dir string, mac *keyring.MACKey, st Indexer, log *slog.Logger) error {
	j, err := journal.Open(dir, mac, 0)
	if err != nil {
		return err
	}
	defer j.Close()
	r, err := j.Recover()
	if err != nil {
		return err
	}
	for _, u := range r.Unreadable {
		log.Warn("the audit journal ends with a record that is not whole or not authentic: the last write before a crash (its callers never got an answer), or an edit on disk; the records before it are kept", "segment", u)
	}
	evs := make([]store.AuditEvent, 0, len(r.Records))
	for _, rec := range r.Records {
		ev, err := decodeJournaled(rec)
		if err != nil {
			return fmt.Errorf("audit journal: %w", err)
		}
		evs = append(evs, ev)
	}
	if len(evs) > 0 {
		if err := st.AppendAudit(evs); err != nil {
			return fmt.Errorf("index the audit journal: %w", err)
		}
		log.Info("indexed the audit events the last run journaled", "events", len(evs))
	}
	return r.Done()
}

// AppendAudit journals evs: they are durable when it returns.
func (s *JournalSink) AppendAudit(evs []store.AuditEvent) error {
	recs := make([][]byte, len(evs))
	for i := range evs {
		if evs[i].Seq == 0 {
			evs[i].Seq = s.st.NextAuditSeq()
		}
		rec, err := encodeJournaled(evs[i])
		if err != nil {
			return err
		}
		recs[i] = rec
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.journal.Append(recs); err != nil {
		return err
	}
	s.pending = append(s.pending, evs...)
	return nil
}

// Flush indexes every event journaled so far.
func (s *JournalSink) Flush() error {
	s.indexMu.Lock()
	defer s.indexMu.Unlock()
	s.mu.Lock()
	cut, err := s.journal.Cut()
	evs := s.pending
	s.pending = nil
	s.mu.Unlock()
	s.indexed = append(s.indexed, cut...)
	if err == nil && len(evs) > 0 {
		err = s.st.AppendAudit(evs)
	}
	if err != nil {
		s.mu.Lock()
		s.pending = append(evs, s.pending...) // indexed at the next try
		s.mu.Unlock()
		return err
	}
	var errs []error
	for _, seg := range s.indexed {
		errs = append(errs, s.journal.Recycle(seg))
	}
	s.indexed = nil
	return errors.Join(errs...)
}

// Run indexes what was journaled every IndexInterval, until ctx ends; it
// then indexes the rest and closes the journal. Stop it after the Log's
// Run, which writes its last events when it stops.
func (s *JournalSink) Run(ctx context.Context) {
	if err := s.journal.Prepare(); err != nil {
		s.log.Error("could not prepare the audit journal's next segment", "error", err)
	}
	tick := time.NewTicker(s.interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := s.Flush(); err != nil {
				s.log.Error("could not index the audit journal; its events are indexed when the broker starts again", "error", err)
			}
			if err := s.journal.Close(); err != nil {
				s.log.Error("could not close the audit journal", "error", err)
			}
			return
		case <-tick.C:
			if err := s.Flush(); err != nil {
				s.log.Error("could not index the audit journal; its events stay in it and are indexed at the next try", "error", err)
			}
		}
	}
}

// A journaled event is its sequence number (8 bytes, big-endian) and its
// JSON.
func encodeJournaled(ev store.AuditEvent) ([]byte, error) {
	data, err := json.Marshal(ev)
	if err != nil {
		return nil, err
	}
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(data)), ev.Seq), data...), nil
}

func decodeJournaled(rec []byte) (store.AuditEvent, error) {
	var ev store.AuditEvent
	if len(rec) < 8 {
		return ev, errors.New("a record too short to be an event")
	}
	if err := json.Unmarshal(rec[8:], &ev); err != nil {
		return ev, err
	}
	ev.Seq = binary.BigEndian.Uint64(rec)
	return ev, nil
}
