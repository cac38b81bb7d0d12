package audit

import (
	"context"
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
	AppendAuditEncoded([]store.EncodedAuditEvent) error
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

	mu      sync.Mutex                // serializes writes to the journal
	pending []store.EncodedAuditEvent // journaled, not yet indexed

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
	evs := make([]store.EncodedAuditEvent, 0, len(r.Records))
	for _, rec := range r.Records {
		ev, err := decodeJournaled(rec)
		if err != nil {
			return fmt.Errorf("audit journal: %w", err)
		}
		evs = append(evs, ev)
	}
	if len(evs) > 0 {
		if err := st.AppendAuditEncoded(evs); err != nil {
			return fmt.Errorf("index the audit journal: %w", err)
		}
		log.Info("indexed the audit events the last run journaled", "events", len(evs))
	}
	return r.Done()
}

// AppendAudit journals evs: they are durable when it returns.
func (s *JournalSink) AppendAudit(evs []store.AuditEvent) error {
	encoded := make([]store.EncodedAuditEvent, len(evs))
	recs := make([][]byte, len(evs))
	for i, ev := range evs {
		seq := ev.Seq
		if seq == 0 {
			seq = s.st.NextAuditSeq()
		}
		data, err := store.EncodeAuditEvent(ev)
		if err != nil {
			return err
		}
		encoded[i] = store.EncodedAuditEvent{Pos: store.AuditPos{Time: ev.Time, Seq: seq}, JSON: data}
		pos := encoded[i].Pos.Bytes()
		recs[i] = append(append(make([]byte, 0, len(pos)+len(data)), pos...), data...)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.journal.Append(recs); err != nil {
		return err
	}
	s.pending = append(s.pending, encoded...)
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
		err = s.st.AppendAuditEncoded(evs)
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

// Close closes the journal, leaving what is in it for the next start (Run
// closes it too, after indexing everything): for a broker made and closed
// without serving.
func (s *JournalSink) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.journal.Close()
}

// A journaled event is its position (store.AuditPos.Bytes) and its JSON
// (store.EncodeAuditEvent).
func decodeJournaled(rec []byte) (store.EncodedAuditEvent, error) {
	pos, ok := store.ParseAuditPos(rec[:min(len(rec), 16)])
	if !ok || !json.Valid(rec[16:]) {
		return store.EncodedAuditEvent{}, errors.New("a record that is not an event")
	}
	return store.EncodedAuditEvent{Pos: pos, JSON: rec[16:]}, nil
}
