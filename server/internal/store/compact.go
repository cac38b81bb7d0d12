package store

// CompactPending reports whether the file may still hold freed pages with
// deleted sealed material: set by the transaction of every deletion of an
// account, a secret or a data key, and cleared by Compact.
func (s *Store) CompactPending() (bool, error) {
	l, err := s.local()
	if err != nil {
		return false, nil // the engine compacts by itself
	}
	return l.CompactPending()
}

// Compact rewrites the database with its live records only, so that
// nothing deleted (a deleted account's wrapped data key and secrets, a
// removed secret, keys wrapped by an old master key) survives in freed
// pages. Calls wait while it runs. A crash at any point leaves the old
// file or the new one, whole.
func (s *Store) Compact() error {
	l, err := s.local()
	if err != nil {
		return err
	}
	return l.Compact()
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
