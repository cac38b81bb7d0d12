package store

import "time"

// CompactPending reports whether the engine's files may still hold
// deleted sealed material (bbolt: in freed pages; etcd: in its history): set by the transaction of every deletion of an
// account, a secret or a data key, and cleared by Compact.
func (s *Store) CompactPending() (bool, error) {
	c, ok := s.db.(compacter)
	if !ok {
		return false, nil // the engine compacts by itself
	}
	return c.CompactPending()
}

// Compact removes deleted sealed material (a deleted account's wrapped
// data key and secrets, a removed secret, keys wrapped by an old master
// key) from the engine's files. On bbolt it rewrites the database with its
// live records only, while calls wait; a crash at any point leaves the
// old file or the new one, whole. On etcd it compacts the history and
// defragments every member.
func (s *Store) Compact() error {
	c, ok := s.db.(compacter)
	if !ok {
		return ErrNotLocal
	}
	return c.Compact()
}

// CompactTo writes a compacted copy of the database, its live records as
// of one read transaction, to a new file at path (a backup), and returns
// its size.
func (s *Store) CompactTo(path string) (int64, error) {
	l, err := s.local()
	if err != nil {
		return 0, err
	}
	return l.Backup(path)
}

// TrimHistory lets an engine that keeps a history of overwritten and
// deleted values (etcd) drop what is older than it keeps (see
// etcd.DB.TrimHistory); call it periodically.
func (s *Store) TrimHistory() error {
	if t, ok := s.db.(interface{ TrimHistory(time.Time) error }); ok {
		return t.TrimHistory(time.Now())
	}
	return nil
}
