package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// ErrLockLost means a refresh lock ended (its holder lost touch with the
// engine for longer than the lock's lease) before the work it guarded was
// done: another process may hold it now.
var ErrLockLost = errors.New("the refresh lock was lost")

// lockWait bounds the wait for a refresh lock: its holder's token request
// has a timeout of its own, far shorter.
const lockWait = 30 * time.Second

// RefreshLock is a process's right to ask the provider for one account's
// token. On an engine that replicas share (etcd) it is a cluster-wide
// lock, so that one replica asks and the others read what it stored; on
// an engine of one process (bbolt) the process's own single flight per
// account is the lock, and this holds nothing.
type RefreshLock struct {
	s    *Store
	id   string
	lock storage.Lock // zero on bbolt
}

// LockTokenRefresh waits for the refresh lock of account id, until ctx
// ends or at most lockWait.
func (s *Store) LockTokenRefresh(ctx context.Context, id string) (*RefreshLock, error) {
	l := &RefreshLock{s: s, id: id}
	locker, ok := s.db.(storage.Locker)
	if !ok {
		return l, nil
	}
	ctx, cancel := context.WithTimeout(ctx, lockWait)
	defer cancel()
	var err error
	if l.lock, err = locker.Lock(ctx, key(tokensBucket, id)); err != nil {
		return nil, fmt.Errorf("take the refresh lock of account %s: %w", id, err)
	}
	return l, nil
}

// Unlock releases the lock.
func (l *RefreshLock) Unlock() {
	if l.lock.Unlock != nil {
		l.lock.Unlock()
	}
}

// Check returns ErrLockLost if the lock is no longer held.
func (l *RefreshLock) Check() error {
	held := l.lock.Held
	if held.Key == "" {
		return nil
	}
	r, err := l.s.db.Get(ctx, held.Key)
	if errors.Is(err, storage.ErrNotFound) {
		r, err = storage.Record{}, nil
	}
	if err != nil {
		return err
	}
	if !held.Holds(r.Version) {
		return ErrLockLost
	}
	return nil
}

// UpdateTokenState is Store.UpdateTokenState, fenced: it writes only while
// the lock is held, in the same transaction, and returns ErrLockLost
// otherwise, so that a holder that lost its lock (paused, cut off) cannot
// overwrite a newer token.
func (l *RefreshLock) UpdateTokenState(change func(*TokenState, []byte) error, ev *AuditEvent) error {
	var held []storage.Cond
	if l.lock.Held.Key != "" {
		held = append(held, l.lock.Held)
	}
	return l.s.updateTokenState(l.id, held, l.Check, change, ev)
}
