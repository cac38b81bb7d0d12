// Package boltdb is the storage engine on one bbolt file, for a broker on
// one machine. It is the only package that imports bbolt. Every commit is
// fsynced before Txn returns, and bbolt's copy-on-write pages leave a
// consistent, openable file after a crash at any point.
//
// A key "kind/name" is the name's entry in the kind's bucket, so that the
// file keeps the layout of the broker's earlier versions. A record's
// version is a hash of its stored bytes; a commit's revision is kept as
// the sequence of a bucket it wrote (see commit). The changes that Watch
// sends are kept in memory, the latest MaxHistoryBytes of them.
//
// bbolt keeps the pages it frees, with whatever they held, until it reuses
// them. A commit with a shredding op makes a compaction pending (see
// Compact), which rewrites the file with live records only.
package boltdb

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// ErrLocked means another process holds the database file.
var ErrLocked = errors.New("database is locked by another process")

// Keys the engine keeps for itself in the meta bucket.
const (
	metaBucket = "meta"
	// compactPendingKey is set while the file may hold freed pages with
	// shredded material.
	compactPendingKey = "compact-pending"
)

// compactSuffix names the file a compaction writes beside the database.
const compactSuffix = ".compacting"

// limits are bbolt's bounds of one transaction: wider than etcd's, since
// one local commit of many records costs one fsync, and the audit trail's
// group commits are that large under load.
var limits = storage.Limits{MaxOps: 4096, MaxBytes: 16 << 20}

// MaxHistoryBytes bounds the changes kept in memory for watchers: a
// watcher further behind than this gets storage.ErrCompacted.
const MaxHistoryBytes = 8 << 20

// DB is the engine. It implements storage.Backend.
type DB struct {
	path string
	// mu is held for reading around every transaction, and for writing
	// while Compact puts a new file in place of the old one.
	mu     sync.RWMutex
	db     *bolt.DB
	closed bool // by Close
	// writeMu orders commits and their entry into the history alike; rev
	// is the latest committed revision.
	writeMu sync.Mutex
	rev     storage.Revision
	// queue holds the transactions waiting for the commit under way
	// (committing) to end, to be committed together (see group).
	queueMu    sync.Mutex
	queue      []*pending
	committing bool
	// logs are the kinds whose pages are filled whole (see Open).
	logs    map[string]bool
	history history
}

var _ storage.Backend = (*DB)(nil)

// Open opens (or creates, mode 0600) the database file at path. If another
// process holds the file, it gives up after lockTimeout with ErrLocked.
// Opening writes nothing to the file. logs are kinds of records whose keys
// grow with time, such as an audit trail's: each record is put after all
// the others, and their pages are filled whole.
func Open(path string, lockTimeout time.Duration, logs ...string) (*DB, error) {
	d, err := open(path, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return nil, err
	}
	d.logs = map[string]bool{}
	for _, kind := range logs {
		d.logs[kind] = true
	}
	return d, nil
}

// OpenReadOnly opens an existing database file (a backup) for reading.
func OpenReadOnly(path string) (*DB, error) {
	return open(path, &bolt.Options{ReadOnly: true, Timeout: time.Second})
}

func open(path string, opts *bolt.Options) (*DB, error) {
	lockTimeout := opts.Timeout
	db, err := bolt.Open(path, 0o600, opts)
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%w: could not lock %s within %s; is another credbroker using this data directory?", ErrLocked, path, lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	d := &DB{path: path, db: db}
	var rev storage.Revision
	_ = db.View(func(tx *bolt.Tx) error { rev = revision(tx); return nil })
	d.rev = rev
	d.history.start(rev)
	if opts.ReadOnly {
		return d, nil
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, err
	}
	// A compaction that a crash interrupted; holding the lock proves that
	// no other process is writing it.
	if err := os.Remove(path + compactSuffix); err != nil && !errors.Is(err, fs.ErrNotExist) {
		db.Close()
		return nil, err
	}
	return d, nil
}

// Limits are the bounds of one transaction.
func (d *DB) Limits() storage.Limits { return limits }

// Path is the database file's path.
func (d *DB) Path() string { return d.path }

// Close closes the file; watches end with storage.ErrClosed.
func (d *DB) Close() error {
	d.history.close()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	return d.db.Close()
}

// view and update run a transaction on the current file.
func (d *DB) view(fn func(*bolt.Tx) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.db.View(fn)
}

func (d *DB) update(fn func(*bolt.Tx) error) error {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.db.Update(fn)
}

// split maps a key to its bucket and the key within it.
func split(key string) (bucket, name []byte, err error) {
	kind, rest, ok := strings.Cut(key, "/")
	if !ok || kind == "" {
		return nil, nil, fmt.Errorf("storage key %q has no kind (kind/name)", key)
	}
	return []byte(kind), []byte(rest), nil
}

// versionOf is the version of a stored value: a hash of its bytes, never
// Absent.
func versionOf(stored []byte) storage.Version {
	if stored == nil {
		return storage.Absent
	}
	sum := sha256.Sum256(stored)
	return storage.Version(max(binary.BigEndian.Uint64(sum[:8]), 1))
}

// revision is the revision of tx's snapshot: the largest sequence of its
// buckets (see commit).
func revision(tx *bolt.Tx) storage.Revision {
	var rev uint64
	_ = tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
		rev = max(rev, b.Sequence())
		return nil
	})
	return storage.Revision(rev)
}

func get(tx *bolt.Tx, key string) ([]byte, error) {
	bucket, name, err := split(key)
	if err != nil {
		return nil, err
	}
	b := tx.Bucket(bucket)
	if b == nil {
		return nil, nil
	}
	return b.Get(name), nil
}

// Get reads one record.
func (d *DB) Get(ctx context.Context, key string) (storage.Record, error) {
	if err := ctx.Err(); err != nil {
		return storage.Record{}, err
	}
	var r storage.Record
	err := d.view(func(tx *bolt.Tx) error {
		v, err := get(tx, key)
		if err != nil {
			return err
		}
		if v == nil {
			return storage.ErrNotFound
		}
		r = storage.Record{Key: key, Value: clone(v), Version: versionOf(v)}
		return nil
	})
	return r, err
}

// List reads a page of the records under r.Prefix, which must hold at least
// a kind and its slash.
func (d *DB) List(ctx context.Context, r storage.Range) (storage.Page, error) {
	var p storage.Page
	err := d.list(ctx, r, func(lent storage.Page) error {
		p = lent
		for i, rec := range p.Records {
			p.Records[i].Value, p.Records[i].Version = clone(rec.Value), versionOf(rec.Value)
		}
		return nil
	})
	return p, err
}

// ListInPlace is List without copying: see storage.InPlaceLister.
func (d *DB) ListInPlace(ctx context.Context, r storage.Range, fn func(storage.Page) error) error {
	return d.list(ctx, r, fn)
}

// list calls fn, inside a read transaction, with the page of r whose
// values lie in the memory map and whose versions are not set.
func (d *DB) list(ctx context.Context, r storage.Range, fn func(storage.Page) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	bucket, prefix, err := split(r.Prefix)
	if err != nil {
		return err
	}
	kind := string(bucket) + "/"
	after := []byte(strings.TrimPrefix(r.After, kind))
	if r.After != "" && !strings.HasPrefix(r.After, kind) {
		return fmt.Errorf("storage: listing %q after %q, a key of another kind", r.Prefix, r.After)
	}
	var p storage.Page
	if r.Limit > 0 {
		p.Records = make([]storage.Record, 0, min(r.Limit, 1024)) // not grown record by record
	}
	return d.view(func(tx *bolt.Tx) error {
		p.Revision = revision(tx)
		b := tx.Bucket(bucket)
		if b == nil {
			return fn(p)
		}
		c := b.Cursor()
		k, v := first(c, prefix, after, r.After != "", r.Reverse)
		for ; k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = step(c, r.Reverse) {
			if r.From != "" && kind+string(k) < r.From {
				if r.Reverse {
					break
				}
				continue
			}
			if kind == metaBucket+"/" && string(k) == compactPendingKey {
				continue // the engine's own
			}
			if r.Limit > 0 && len(p.Records) == r.Limit {
				p.More = true
				break
			}
			p.Records = append(p.Records, storage.Record{Key: kind + string(k), Value: v})
		}
		return fn(p)
	})
}

// Count is how many records are under prefix (a kind and its slash, and
// more).
func (d *DB) Count(ctx context.Context, prefix string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	bucket, name, err := split(prefix)
	if err != nil {
		return 0, err
	}
	var n int64
	err = d.view(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		switch {
		case b == nil:
		case len(name) == 0:
			n = int64(b.Stats().KeyN)
		default:
			c := b.Cursor()
			for k, _ := c.Seek(name); k != nil && strings.HasPrefix(string(k), string(name)); k, _ = c.Next() {
				n++
			}
		}
		return nil
	})
	return n, err
}

// first places c on the first key of a listing.
func first(c *bolt.Cursor, prefix, after []byte, hasAfter, reverse bool) ([]byte, []byte) {
	if !reverse {
		if !hasAfter || string(after) < string(prefix) {
			return c.Seek(prefix)
		}
		k, v := c.Seek(after)
		if k != nil && string(k) == string(after) {
			return c.Next()
		}
		return k, v
	}
	// Reverse: the last key before the bound, which is after (if it is
	// inside the prefix) or the end of the prefix.
	bound := []byte(storage.PrefixEnd(string(prefix)))
	if hasAfter && (len(bound) == 0 || string(after) < string(bound)) {
		bound = after
	}
	if len(bound) == 0 {
		return c.Last()
	}
	if k, _ := c.Seek(bound); k == nil {
		return c.Last()
	}
	return c.Prev()
}

func step(c *bolt.Cursor, reverse bool) ([]byte, []byte) {
	if reverse {
		return c.Prev()
	}
	return c.Next()
}

// Txn commits ops if conds hold.
func (d *DB) Txn(ctx context.Context, conds []storage.Cond, ops []storage.Op) (storage.Revision, error) {
	if err := limits.Check(conds, ops); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return d.group(func(tx *bolt.Tx, w *writes) error {
		for _, c := range conds {
			v, err := get(tx, c.Key)
			if err != nil {
				return err
			}
			if !c.Holds(versionOf(v)) {
				return fmt.Errorf("%w: %s", storage.ErrConflict, c.Key)
			}
		}
		for _, op := range ops {
			if err := w.apply(tx, op); err != nil {
				return err
			}
		}
		return nil
	})
}

// writes are what a transaction changed.
type writes struct {
	// events are the changes to watch: all but those to logs.
	events []storage.Event
	wrote  bool
	last   []byte // the bucket of the last write
	shred  bool
	// logs are the kinds that are logs (see Open).
	logs map[string]bool
}

// apply makes one op in tx and notes its event, if it changed anything (a
// deletion of a missing record does not).
func (w *writes) apply(tx *bolt.Tx, op storage.Op) error {
	bucket, name, err := split(op.Key)
	if err != nil {
		return err
	}
	ev := storage.Event{Key: op.Key, Deleted: op.Delete}
	if op.Delete {
		b := tx.Bucket(bucket)
		if b == nil || b.Get(name) == nil {
			return nil
		}
		err = b.Delete(name)
	} else {
		if string(bucket) == metaBucket && string(name) == compactPendingKey {
			return fmt.Errorf("storage key %q is the engine's own", op.Key)
		}
		if ev.Value = op.Value; ev.Value == nil {
			ev.Value = []byte{}
		}
		if !w.logs[string(bucket)] {
			// Watchers get a copy and its version. A log's records go to
			// none: an audit event's copy and hash were 2.5% of the CPU
			// of a GetToken.
			ev.Value = clone(ev.Value)
			ev.Version = versionOf(ev.Value)
		}
		err = w.put(tx, bucket, name, ev.Value)
	}
	if !w.logs[string(bucket)] {
		w.events = append(w.events, ev)
	}
	w.wrote, w.last = true, bucket
	w.shred = w.shred || op.Shred
	return err
}

// commit runs fn in one write transaction and, if it wrote anything, gives
// the transaction the next revision, which it keeps as the sequence of a
// bucket it wrote (the revision of a snapshot is the largest sequence of
// its buckets: no extra page is written), and adds the change to the
// history once committed.
func (d *DB) commit(fn func(*bolt.Tx, *writes) error) (storage.Revision, error) {
	return d.commitBatch([]*pending{{fn: fn}})[0].result()
}

// pending is a transaction waiting to be committed with others (see
// group): its function, and once done, its revision or error.
type pending struct {
	fn   func(*bolt.Tx, *writes) error
	rev  storage.Revision
	err  error
	done chan struct{}
	lead bool // woken to commit the queue, not because it is done
}

func (p *pending) result() (storage.Revision, error) { return p.rev, p.err }

// group commits fn together with the transactions of other callers that
// wait meanwhile: one bbolt transaction, and so one pair of fsyncs, for
// all of them, each with a revision of its own, in the order they came.
// The first caller commits; callers that come while a commit is under way
// queue, and the first of them commits the queue next.
func (d *DB) group(fn func(*bolt.Tx, *writes) error) (storage.Revision, error) {
	p := &pending{fn: fn, done: make(chan struct{}, 1)}
	d.queueMu.Lock()
	d.queue = append(d.queue, p)
	lead := !d.committing
	d.committing = true
	d.queueMu.Unlock()
	if !lead {
		<-p.done
		if !p.lead {
			return p.result()
		}
	}
	d.queueMu.Lock()
	batch := d.queue
	d.queue = nil
	d.queueMu.Unlock()
	defer d.handOver(batch, p)
	d.commitBatch(batch)
	return p.result()
}

// handOver ends leader p's commit of batch: the first transaction queued
// meanwhile, if any, commits the queue next, and the batch's callers get
// their results. If the commit panicked (bbolt rolled it back), the
// others' transactions fail, and the panic goes on in p's caller.
func (d *DB) handOver(batch []*pending, p *pending) {
	panicked := recover()
	d.queueMu.Lock()
	if len(d.queue) > 0 {
		next := d.queue[0]
		next.lead = true
		next.done <- struct{}{}
	} else {
		d.committing = false
	}
	d.queueMu.Unlock()
	for _, q := range batch {
		if q == p {
			continue
		}
		if panicked != nil {
			q.rev, q.err = 0, errors.New("storage: a transaction committed with this one panicked; nothing was written")
		}
		q.done <- struct{}{}
	}
	if panicked != nil {
		panic(panicked)
	}
}

// commitBatch commits the transactions of batch in one bbolt transaction,
// each with the next revision, and enters their changes into the history.
// A transaction whose conditions do not hold changes nothing and gets its
// error; if any other error stops one, the batch is undone and each is
// committed alone, so that the error fails only its own transaction.
func (d *DB) commitBatch(batch []*pending) []*pending {
	if err := d.commitOnce(batch); errors.Is(err, errStopped) && len(batch) > 1 {
		for _, p := range batch {
			d.commitOnce([]*pending{p})
		}
	}
	return batch
}

// errStopped: a transaction of a batch failed, and the batch was undone.
var errStopped = errors.New("a transaction of the batch failed")

func (d *DB) commitOnce(batch []*pending) error {
	d.writeMu.Lock()
	defer d.writeMu.Unlock()
	var changes []storage.Change
	err := d.update(func(tx *bolt.Tx) error {
		rev := d.rev
		changes = changes[:0]
		for _, p := range batch {
			w := writes{logs: d.logs}
			p.rev, p.err = rev, p.fn(tx, &w)
			if p.err != nil {
				if w.wrote || !errors.Is(p.err, storage.ErrConflict) || len(batch) == 1 {
					return errStopped
				}
				continue // it changed nothing
			}
			if !w.wrote {
				continue
			}
			if w.shred {
				meta, err := tx.CreateBucketIfNotExists([]byte(metaBucket))
				if err != nil {
					return err
				}
				if err := meta.Put([]byte(compactPendingKey), []byte("1")); err != nil {
					return err
				}
			}
			rev++
			p.rev = rev
			changes = append(changes, storage.Change{Revision: rev, Events: w.events})
			if err := tx.Bucket(w.last).SetSequence(uint64(rev)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		for _, p := range batch {
			p.rev = 0
			if !errors.Is(err, errStopped) { // else its own error stands (or it is committed alone next)
				p.err = err
			}
		}
		return err
	}
	for _, c := range changes {
		d.rev = c.Revision
		d.history.add(c)
	}
	return nil
}

// put writes one record. A log's bucket fills its pages whole: its
// records are put at its end, after every stored key, so a full page is
// never written again, and this halves its pages and the pages each commit
// writes.
func (w *writes) put(tx *bolt.Tx, bucket, name []byte, value []byte) error {
	b, err := tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	if w.logs[string(bucket)] {
		b.FillPercent = 1
	}
	return b.Put(name, value)
}

// Watch sends committed changes under prefix after revision after.
func (d *DB) Watch(ctx context.Context, prefix string, after storage.Revision) <-chan storage.Change {
	out := make(chan storage.Change, 16)
	go d.history.follow(ctx, prefix, after, out)
	return out
}

func clone(b []byte) []byte {
	if b == nil {
		return nil
	}
	return append([]byte(nil), b...)
}

// syncDir makes a renamed file's directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// ReleasePages tells the kernel this process no longer needs the pages of
// the database file it has read (madvise MADV_DONTNEED on the read-only
// mapping): they stay in the page cache, and a later read maps them again.
// A start reads every account once; without this the whole file would
// stay in the broker's resident memory.
func (d *DB) ReleasePages() error {
	// Held for writing: no transaction runs, so no commit grows (and
	// maps anew) the file meanwhile.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	fi, err := os.Stat(d.path)
	if err != nil {
		return err
	}
	info := d.db.Info()
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, info.Data, uintptr(fi.Size()), syscall.MADV_DONTNEED); errno != 0 {
		return fmt.Errorf("release the database's pages: %w", errno)
	}
	return nil
}
