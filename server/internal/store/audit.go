package store

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/storage/boltdb"
)

// TamperedEvent is the method of an audit event that ScanAudit shows in
// place of a stored event that failed its integrity check.
const TamperedEvent = "integrity_check_failed"

// AuditPos is an audit event's place in the trail: events sort by time,
// then by the order they were stored in.
type AuditPos struct {
	Time time.Time
	Seq  uint64
}

// Bytes encodes the position as 16 bytes that sort like positions do:
// big-endian UnixNano time, then big-endian sequence number.
func (p AuditPos) Bytes() []byte {
	k := make([]byte, 16)
	binary.BigEndian.PutUint64(k, uint64(p.Time.UnixNano()))
	binary.BigEndian.PutUint64(k[8:], p.Seq)
	return k
}

// ParseAuditPos reads what Bytes wrote.
func ParseAuditPos(b []byte) (AuditPos, bool) {
	if len(b) != 16 {
		return AuditPos{}, false
	}
	return auditPos(b), true
}

func auditPos(k []byte) AuditPos {
	return AuditPos{Time: time.Unix(0, int64(binary.BigEndian.Uint64(k))).UTC(), Seq: binary.BigEndian.Uint64(k[8:])}
}

// AppendAudit stores events: in one transaction, one fsync for the batch,
// unless there are more than the engine takes in one.
func (s *Store) AppendAudit(events []AuditEvent) error {
	return s.appendAll(len(events), func(i int) built { return s.appendAudit(events[i]) })
}

// EncodedAuditEvent is an event as AppendAuditEncoded stores it: encoded
// once by EncodeAuditEvent (for the audit journal, say), at its position.
type EncodedAuditEvent struct {
	Pos  AuditPos
	JSON []byte
}

// EncodeAuditEvent encodes ev as AppendAuditEncoded stores it.
func EncodeAuditEvent(ev AuditEvent) ([]byte, error) {
	ev.Version = recordVersion
	return json.Marshal(ev)
}

// AppendAuditEncoded stores encoded events as AppendAudit stores events.
func (s *Store) AppendAuditEncoded(events []EncodedAuditEvent) error {
	return s.appendAll(len(events), func(i int) built {
		k := events[i].Pos.Bytes()
		return built{op: storage.Put(key(auditBucket, string(k)), s.masters.SealRecord(auditBucket, k, events[i].JSON))}
	})
}

// appendAll stores the n events that build makes, sealed once under the
// key of the check value's version read first; sealed again only if that
// changed (a rotation) before the commit.
func (s *Store) appendAll(n int, build func(i int) built) error {
	sealedAt := s.keyCheck.Load()
	bs := make([]built, n)
	all := make([]storage.Op, n)
	for i := range n {
		if bs[i] = build(i); bs[i].err != nil {
			return bs[i].err
		}
		all[i] = bs[i].op
	}
	first := 0
	for _, chunk := range s.db.Limits().Chunks(all) {
		from, to := first, first+len(chunk)
		first = to
		sealed := bs[from:to]
		err := s.commit(func() (txn, error) {
			if sealed == nil || s.keyCheck.Load() != sealedAt {
				sealed = make([]built, to-from)
				for i := range sealed {
					sealed[i] = build(from + i)
				}
			}
			t, err := ops(nil, sealed...)
			sealed = nil // a retry seals anew
			return t, err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// appendAudit is the op that stores one event, for a transaction that
// commits a change and its audit event together or not at all. Events
// are keyed by their time and a sequence number of this process, whose
// random start keeps the keys of replicas apart (see Store.auditSeq).
func (s *Store) appendAudit(ev AuditEvent) built {
	ev.Version = recordVersion
	if ev.Seq == 0 {
		ev.Seq = s.NextAuditSeq()
	}
	b := s.put(auditBucket, string(AuditPos{Time: ev.Time, Seq: ev.Seq}.Bytes()), ev)
	b.onCommit = ev.OnCommit
	return b
}

// bulkAudit stores one event in a bulk transaction; the caller counts it
// (auditEvents) once that commits.
func (s *Store) bulkAudit(b *boltdb.Bulk, ev AuditEvent) error {
	put := s.appendAudit(ev)
	if put.err != nil {
		return put.err
	}
	return b.Put(put.op.Key, put.op.Value)
}

// countAudit counts the audit ops among ops.
func countAudit(ops []storage.Op) int {
	n := 0
	for _, op := range ops {
		if !op.Delete && storage.Under(op.Key, auditPrefix) {
			n++
		}
	}
	return n
}

var auditPrefix = key(auditBucket, "")

// countAudit counts the stored events.
func (s *Store) countAudit() error {
	n, err := s.db.Count(ctx, auditPrefix)
	if err == nil {
		s.auditEvents.Store(n)
	}
	return err
}

// NextAuditSeq numbers an audit event of this process.
func (s *Store) NextAuditSeq() uint64 { return s.auditSeq.Add(1) }

// startAuditSeq starts this process's sequence numbers of audit events.
func (s *Store) startAuditSeq() error {
	var start [4]byte
	if _, err := rand.Read(start[:]); err != nil {
		return err
	}
	s.auditSeq.Store(uint64(binary.BigEndian.Uint32(start[:])) << 32)
	return nil
}

// auditPage is how many events ScanAudit and PruneAudit read at a time.
const auditPage = 512

// ScanAudit calls fn for stored events from the newest down, starting
// before the given position (a zero Time starts at the newest event),
// until fn returns false. An event that fails its integrity check comes
// as TamperedEvent at its place.
//
// It reads in windows of time that reach back from before (from now, if
// none), an hour and then twice as far each time, because etcd reads every
// key of a range to list it newest first: a listing of recent events reads
// only recent keys.
func (s *Store) ScanAudit(before AuditPos, fn func(AuditPos, AuditEvent) bool) error {
	oldest, err := s.db.List(ctx, storage.Range{Prefix: auditPrefix, Limit: 1})
	if err != nil || len(oldest.Records) == 0 {
		return err
	}
	upper := before.Time
	if upper.IsZero() {
		upper = time.Now()
	}
	r := storage.Range{Prefix: auditPrefix, Reverse: true, Limit: auditPage}
	if !before.Time.IsZero() {
		r.After = auditPrefix + string(before.Bytes())
	}
	for window := time.Hour; ; window *= 2 {
		lower := upper.Add(-window)
		from := auditPrefix + string(AuditPos{Time: lower}.Bytes())
		if lower.UnixNano() <= 0 || from <= oldest.Records[0].Key {
			from = "" // the last window: to the oldest event
		}
		r.From = from
		if more, err := s.scanAuditRange(r, fn); err != nil || !more || from == "" {
			return err
		}
		r.After = from // keys before this window's first
	}
}

// scanAuditRange calls fn for the events of r, a page at a time, and
// reports whether fn wants more.
func (s *Store) scanAuditRange(r storage.Range, fn func(AuditPos, AuditEvent) bool) (bool, error) {
	for {
		p, err := s.db.List(ctx, r)
		if err != nil {
			return false, err
		}
		for _, rec := range p.Records {
			k := []byte(rec.Key[len(auditPrefix):])
			var ev AuditEvent
			err := s.open(auditBucket, k, rec.Value, &ev)
			if errors.Is(err, ErrIntegrity) {
				ev = AuditEvent{Time: auditPos(k).Time, Method: TamperedEvent, Code: "DATA_LOSS",
					Detail: "this stored event failed its integrity check: it was changed outside the broker"}
			} else if err != nil {
				return false, fmt.Errorf("audit event %x: %w", k, err)
			}
			if !fn(auditPos(k), ev) {
				return false, nil
			}
		}
		if !p.More {
			return true, nil
		}
		r.After = p.Records[len(p.Records)-1].Key
	}
}

// PruneAudit deletes events older than cutoff, and then the oldest events
// that expendable accepts (nil: any) beyond the newest keep, and returns
// how many it deleted. Events that expendable refuses are deleted by age
// only, so that no volume of other events can push them out. It deletes at
// most limit events per call, in transactions within the engine's limits.
func (s *Store) PruneAudit(cutoff time.Time, keep, limit int, expendable func(AuditEvent) bool) (int, error) {
	if _, shared := s.db.(storage.Locker); shared {
		// Other replicas append too: count afresh (etcd counts from its
		// index, without reading the events).
		if err := s.countAudit(); err != nil {
			return 0, err
		}
	}
	excess := int(s.auditEvents.Load()) - keep
	var doomed []storage.Op
	r := storage.Range{Prefix: auditPrefix, Limit: auditPage}
collect:
	for len(doomed) < limit {
		p, err := s.db.List(ctx, r)
		if err != nil {
			return 0, err
		}
		for _, rec := range p.Records {
			k := []byte(rec.Key[len(auditPrefix):])
			if len(doomed) == limit {
				break collect
			}
			if !auditPos(k).Time.Before(cutoff) {
				if len(doomed) >= excess {
					break collect // nothing older is due, and the count is down to keep
				}
				if expendable != nil && !s.expendable(k, rec.Value, expendable) {
					continue // kept until it is old
				}
			}
			doomed = append(doomed, storage.Delete(rec.Key))
		}
		if !p.More {
			break
		}
		r.After = p.Records[len(p.Records)-1].Key
	}
	deleted := 0
	for _, chunk := range s.db.Limits().Chunks(doomed) {
		if _, err := s.db.Txn(ctx, nil, chunk); err != nil {
			return deleted, err
		}
		deleted += len(chunk)
		s.auditEvents.Add(int64(-len(chunk)))
	}
	return deleted, nil
}

// expendable asks fn about a stored event; one that fails its integrity
// check is expendable.
func (s *Store) expendable(k, v []byte, fn func(AuditEvent) bool) bool {
	var ev AuditEvent
	if err := s.open(auditBucket, k, v, &ev); err != nil {
		return true
	}
	return fn(ev)
}
