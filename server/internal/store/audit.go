package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
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

// AppendAudit stores events in one transaction: one fsync for the batch.
func (s *Store) AppendAudit(events []AuditEvent) error {
	return s.update(func(tx *bolt.Tx) error {
		for _, ev := range events {
			if err := s.appendAudit(tx, ev); err != nil {
				return err
			}
		}
		return nil
	})
}

// appendAudit stores one event in tx, so that a change and its audit event
// are committed together or not at all.
func (s *Store) appendAudit(tx *bolt.Tx, ev AuditEvent) error {
	b := tx.Bucket(auditBucket)
	// Events are appended in key order (time first), so full pages are
	// never written to again: filling them halves the file.
	b.FillPercent = 1
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	ev.Version = recordVersion
	if err := s.put(tx, auditBucket, string(AuditPos{Time: ev.Time, Seq: seq}.Bytes()), ev); err != nil {
		return err
	}
	tx.OnCommit(func() { s.auditEvents.Add(1) })
	return nil
}

// countAudit counts the stored events once, when the store opens.
func (s *Store) countAudit() {
	_ = s.view(func(tx *bolt.Tx) error {
		s.auditEvents.Store(int64(tx.Bucket(auditBucket).Stats().KeyN))
		return nil
	})
}

// ScanAudit calls fn for stored events from the newest down, starting
// before the given position (a zero Time starts at the newest event),
// until fn returns false. An event that fails its integrity check comes
// as TamperedEvent at its place.
func (s *Store) ScanAudit(before AuditPos, fn func(AuditPos, AuditEvent) bool) error {
	return s.view(func(tx *bolt.Tx) error {
		c := tx.Bucket(auditBucket).Cursor()
		var k, v []byte
		if before.Time.IsZero() {
			k, v = c.Last()
		} else {
			// Seek finds the first key at or after before; step back from it.
			if k, _ = c.Seek(before.Bytes()); k == nil {
				k, v = c.Last()
			} else {
				k, v = c.Prev()
			}
		}
		for ; k != nil; k, v = c.Prev() {
			var ev AuditEvent
			err := s.open(auditBucket, k, v, &ev)
			if errors.Is(err, ErrIntegrity) {
				ev = AuditEvent{Time: auditPos(k).Time, Method: TamperedEvent, Code: "DATA_LOSS",
					Detail: "this stored event failed its integrity check: it was changed outside the broker"}
			} else if err != nil {
				return fmt.Errorf("audit event %x: %w", k, err)
			}
			if !fn(auditPos(k), ev) {
				return nil
			}
		}
		return nil
	})
}

// PruneAudit deletes events older than cutoff, and then the oldest events
// that expendable accepts (nil: any) beyond the newest keep, and returns
// how many it deleted. Events that expendable refuses are deleted by age
// only, so that no volume of other events can push them out. It deletes at
// most limit events per call, so one transaction never grows large.
func (s *Store) PruneAudit(cutoff time.Time, keep, limit int, expendable func(AuditEvent) bool) (int, error) {
	deleted := 0
	err := s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(auditBucket)
		excess := int(s.auditEvents.Load()) - keep
		// Collect first: deleting under a cursor can make it skip keys.
		var doomed [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(doomed) < limit; k, v = c.Next() {
			if !auditPos(k).Time.Before(cutoff) {
				if len(doomed) >= excess {
					break // nothing older is due, and the count is down to keep
				}
				if expendable != nil && !s.expendable(k, v, expendable) {
					continue // kept until it is old
				}
			}
			doomed = append(doomed, copyBytes(k))
		}
		for _, k := range doomed {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		deleted = len(doomed)
		tx.OnCommit(func() { s.auditEvents.Add(int64(-deleted)) })
		return nil
	})
	return deleted, err
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
