// Package storage is the interface between the broker and the engine that
// keeps its state: records under string keys, each with a version; reads
// of one key or of a prefix, a page at a time; small atomic transactions
// whose writes hold only if what they were based on has not changed
// (compare-and-swap on versions); and the stream of committed changes,
// from which in-memory mirrors (the token cache, grants, caller keys) are
// kept up to date.
//
// It is designed for two engines: bbolt (package boltdb, one process on
// one file) and etcd (several replicas). Everything here is what an etcd
// transaction can express: conditions on versions, a bounded number of
// operations and bytes, no read transaction held open across calls.
//
// Every engine passes the conformance suite in package storagetest.
//
// Engines store values as they are given: they never see a secret in the
// clear, and they do not check records' integrity. Package keyring tags
// and checks records, the domain packages encode them.
package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Version names one stored value of a record; Absent (0) means there is
// none. Compare versions for equality only: etcd gives a record's
// modification revision, bbolt a hash of the stored bytes, so on bbolt a
// record changed and changed back has its earlier version again. A
// compare-and-swap on it still holds what it promises: the record holds
// exactly the value the change was computed from.
type Version uint64

// Absent is the version of a record that does not exist.
const Absent Version = 0

// Revision numbers the engine's committed transactions, in commit order.
// A List says at which revision it read, and Watch continues from one.
type Revision int64

// Limits bound one transaction. Every engine refuses a larger one with
// ErrTooLarge; code that writes much splits it by its engine's limits.
type Limits struct {
	MaxOps   int // operations, and conditions
	MaxBytes int // keys and values of the operations
}

// EtcdLimits are those of etcd's defaults (--max-txn-ops 128,
// --max-request-bytes 1.5 MiB, with room for framing).
var EtcdLimits = Limits{MaxOps: 128, MaxBytes: 1 << 20}

var (
	// ErrNotFound: no record has the key.
	ErrNotFound = errors.New("not found")
	// ErrConflict: a condition of a transaction did not hold; nothing was
	// written. Read again, and retry if the change still applies.
	ErrConflict = errors.New("the record changed since it was read")
	// ErrTooLarge: a transaction exceeds its engine's Limits.
	ErrTooLarge = errors.New("transaction too large")
	// ErrCompacted: Watch was asked for changes older than the engine
	// keeps. Read afresh and watch from the revision of that read.
	ErrCompacted = errors.New("the changes asked for are no longer kept")
	// ErrClosed: the engine has been closed.
	ErrClosed = errors.New("storage is closed")
	// ErrUnavailable: the engine could not be reached, or could not
	// commit (an etcd cluster without a quorum). A write that failed so
	// may have been committed all the same.
	ErrUnavailable = errors.New("storage unavailable")
)

// Record is one stored value.
type Record struct {
	Key     string
	Value   []byte
	Version Version
}

// Backend is a storage engine.
type Backend interface {
	// Get reads one record, or returns ErrNotFound.
	Get(ctx context.Context, key string) (Record, error)
	// List reads one page of the records under a prefix, all at one
	// revision, which it returns.
	List(ctx context.Context, r Range) (Page, error)
	// Count is how many records are under a prefix.
	Count(ctx context.Context, prefix string) (int64, error)
	// Txn makes every op, in order, if every condition holds, as one
	// atomic and durable commit (on disk, or agreed by a quorum, before it
	// returns), and returns its revision. If a condition fails it writes
	// nothing and returns ErrConflict.
	Txn(ctx context.Context, conds []Cond, ops []Op) (Revision, error)
	// Watch sends the changes committed after revision after to keys
	// under prefix ("" for every key), in commit order, a Change per
	// transaction, until ctx ends; then it closes the channel. Writes to
	// the kinds an engine was opened with as logs (an audit trail) are
	// not sent. An engine that several processes share also sends progress
	// reports (see Change.Current) a few times a second, so that a
	// watcher knows how far behind it may be. A Change
	// with Err set is the last one: ErrCompacted (after is older than the
	// engine keeps, or the watcher fell that far behind) or ErrClosed.
	Watch(ctx context.Context, prefix string, after Revision) <-chan Change
	// Limits are the bounds of one transaction.
	Limits() Limits
	// Close releases the engine; watches end with ErrClosed.
	Close() error
}

// Locker is implemented by engines that several processes share (etcd):
// a named lock that one process holds at a time, and loses if it dies or
// loses touch with the engine for long.
type Locker interface {
	// Lock waits until this process holds the lock name, or ctx ends.
	Lock(ctx context.Context, name string) (Lock, error)
}

// Announcer is implemented by engines that several processes share
// (etcd): each process announces a value that lasts for as long as the
// process is alive and in touch with the engine, and any can read what
// the live ones announced.
type Announcer interface {
	// Announce makes value this process's announcement, or keeps it up.
	Announce(ctx context.Context, value []byte) error
	// Announced are the live processes' announcements.
	Announced(ctx context.Context) ([][]byte, error)
}

// Lock is a held lock.
type Lock struct {
	// Held holds for as long as the lock is held: a transaction with it
	// commits only if its maker still holds the lock (a fenced write).
	Held Cond
	// Unlock releases the lock.
	Unlock func()
}

// Snapshotter is implemented by engines that can read every record, logs
// included, as of one revision, without holding up writers (etcd): what a
// backup of a running cluster reads.
type Snapshotter interface {
	Snapshot(ctx context.Context, fn func(Record) error) (Revision, error)
}

// InPlaceLister is implemented by engines whose records can be read
// where they lie (bbolt's memory map): ListInPlace calls fn with the page
// List would return, its values valid only until fn returns and its
// records' versions not computed. A listing of 100,000 accounts copied
// (and hashed, for the version) each record only to decode it.
type InPlaceLister interface {
	ListInPlace(ctx context.Context, r Range, fn func(Page) error) error
}

// Range selects records by key prefix.
type Range struct {
	// Prefix holds at least a kind and its slash: keys are "kind/name",
	// the name of any bytes.
	Prefix string
	// After continues a listing: only keys after this one (before it, if
	// Reverse). Empty starts at the first key (the last, if Reverse).
	After string
	// From, if set, is the lowest key listed: a reverse listing stops
	// there. (etcd reads every key of a range to list it in reverse, so a
	// reverse listing of a long log should bound its range.)
	From string
	// Limit bounds the page; 0 means no bound.
	Limit int
	// Reverse lists in descending key order.
	Reverse bool
}

// Page is what List read.
type Page struct {
	Records []Record
	// More: further records follow the page.
	More bool
	// Revision is the revision the page was read at.
	Revision Revision
}

// Cond is a condition of a transaction on one record.
type Cond struct {
	Key string
	// Version the record must have (Absent: it must not exist), unless
	// Exists is set.
	Version Version
	// Exists: the record must exist, whatever its version.
	Exists bool
}

// VersionIs holds while key's record has version v; VersionIs(key, Absent)
// while there is none.
func VersionIs(key string, v Version) Cond { return Cond{Key: key, Version: v} }

// Exists holds while key has a record.
func Exists(key string) Cond { return Cond{Key: key, Exists: true} }

// Holds reports whether the condition holds for a record of version v
// (Absent if there is none).
func (c Cond) Holds(v Version) bool {
	if c.Exists {
		return v != Absent
	}
	return v == c.Version
}

// Op is a write of a transaction.
type Op struct {
	Key   string
	Value []byte
	// Delete removes the record; Value is unused.
	Delete bool
	// Shred: the record being replaced or deleted holds sealed material
	// that must not survive in the engine's files, not even in freed space
	// (bbolt compacts its file soon after); etcd compacts its history, but
	// keeps a copy in its write-ahead log until it purges old log files.
	Shred bool
}

// Put writes value under key.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// Delete removes key's record, if there is one.
func Delete(key string) Op { return Op{Key: key, Delete: true} }

// Shredding is op, marked as removing sealed material (see Op.Shred).
func (op Op) Shredding() Op { op.Shred = true; return op }

// Change is one committed transaction's writes under a watched prefix.
type Change struct {
	Revision Revision
	Events   []Event
	// Err ends the stream (see Backend.Watch).
	Err error
	// Current, set on a Change without events (a progress report, from
	// engines that several processes share), says that every change
	// committed before this time has been sent: Revision is the engine's
	// revision then.
	Current time.Time
}

// Event is one write of a change.
type Event struct {
	Key string
	// Value is the new value; nil if Deleted.
	Value   []byte
	Version Version
	Deleted bool
}

// Check refuses a transaction larger than l, or with an empty key;
// engines call it first.
func (l Limits) Check(conds []Cond, ops []Op) error {
	if len(ops) > l.MaxOps || len(conds) > l.MaxOps {
		return fmt.Errorf("%w: %d ops and %d conditions, at most %d each", ErrTooLarge, len(ops), len(conds), l.MaxOps)
	}
	size := 0
	for _, op := range ops {
		if op.Key == "" {
			return errors.New("storage: an op without a key")
		}
		size += len(op.Key) + len(op.Value)
	}
	if size > l.MaxBytes {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, size, l.MaxBytes)
	}
	for _, c := range conds {
		if c.Key == "" {
			return errors.New("storage: a condition without a key")
		}
	}
	return nil
}

// PrefixEnd is the first key after every key that starts with prefix, or
// "" if there is none (the prefix is empty or all 0xff).
func PrefixEnd(prefix string) string {
	b := []byte(prefix)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return ""
}

// Chunks splits ops into transactions within l.
func (l Limits) Chunks(ops []Op) [][]Op {
	var out [][]Op
	start, size := 0, 0
	for i, op := range ops {
		n := len(op.Key) + len(op.Value)
		if i > start && (i-start == l.MaxOps || size+n > l.MaxBytes) {
			out = append(out, ops[start:i])
			start, size = i, 0
		}
		size += n
	}
	if start < len(ops) {
		out = append(out, ops[start:])
	}
	return out
}

// Under reports whether key is under prefix.
func Under(key, prefix string) bool { return strings.HasPrefix(key, prefix) }
