// Package etcd is the storage engine on an etcd cluster, for brokers that
// run as several replicas. Every key lives under one prefix: records under
// prefix+"data/", logs (see Open) under prefix+"log/", locks under
// prefix+"locks/", so that a watch of the records sees neither the audit
// trail nor lock traffic. A record's version is its modification revision, so compare-and-swap is etcd's own
// If(ModRevision(key) == v), and a commit is agreed by a quorum before Txn
// returns. Watch is an etcd watch from a revision.
//
// etcd keeps a key's earlier values until its history is compacted. A
// commit with a shredding op records its revision under the engine's own
// key (see Compact), and any replica's upkeep then compacts the history
// up to it, so that a deleted secret's sealed copy leaves etcd's keyspace
// and history. It is not defragmented away: defragmenting blocks a member
// for seconds, and etcd's write-ahead log keeps its copy anyway until etcd
// purges old log files. What stays there is sealed under the master key.
package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"

	"github.com/credbroker/credbroker/server/internal/storage"
)

// Config says where the cluster is and how to reach it.
type Config struct {
	// Endpoints are the client URLs of the cluster's members.
	Endpoints []string
	// Prefix is put before every key; brokers that share a cluster with
	// other users keep apart by it. Default DefaultPrefix.
	Prefix string
	// CAFile verifies the members' certificates; CertFile and KeyFile are
	// the broker's client certificate. All PEM; all optional.
	CAFile, CertFile, KeyFile string
	// DialTimeout bounds the first connection. Default 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds each read and commit made without a deadline
	// of its own, so that a cluster without a quorum fails calls instead
	// of hanging them. Default 5s.
	RequestTimeout time.Duration
	// LockTTL is how long the locks of a process that stopped answering
	// (dead, paused, cut off) outlive it. Default DefaultLockTTL.
	LockTTL time.Duration
	// HistoryRetention is how long etcd keeps the earlier values of
	// what the broker overwrote or deleted (an audit trail's pruned
	// events, replaced tokens) before TrimHistory compacts them away, so
	// that etcd does not grow without bound. Compaction is cluster-wide:
	// a negative value leaves it to etcd's own --auto-compaction-*.
	// Default DefaultHistoryRetention.
	HistoryRetention time.Duration
}

// DefaultPrefix is the prefix of a broker's keys when none is configured.
const DefaultPrefix = "/credbroker/"

// Defaults of Config.
const (
	DefaultLockTTL          = 10 * time.Second
	DefaultHistoryRetention = 10 * time.Minute
)

// shredKey is the engine's own key (after the prefix): its revision is
// that of the latest commit that shredded sealed material, while its
// history is not yet compacted.
const shredKey = "shred-pending"

// Where each sort of key lives, after the prefix.
const (
	dataDir  = "data/"
	logDir   = "log/"
	locksDir = "locks/"
	// replicasDir holds the replicas' announcements (see Announce).
	replicasDir = "replicas/"
	// loadingKey is there while Load writes a backup's records.
	loadingKey = "loading"
)

// DB is the engine. It implements storage.Backend, storage.Locker and
// storage.Announcer.
type DB struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
	lockTTL int
	// logs are the kinds kept under logDir.
	logs map[string]bool

	// revisions are samples of the revision over time, for TrimHistory.
	retention time.Duration
	trimMu    sync.Mutex
	revisions []revisionAt

	// session is the lease that this process's locks live on (see Lock).
	sessionMu sync.Mutex
	session   *concurrency.Session
	// announced is the value last announced, on the session announcedOn.
	announceMu  sync.Mutex
	announcedOn *concurrency.Session
	announced   []byte

	closeOnce sync.Once
	closed    chan struct{}
}

var (
	_ storage.Backend   = (*DB)(nil)
	_ storage.Locker    = (*DB)(nil)
	_ storage.Announcer = (*DB)(nil)
)

// Open connects to the cluster; it fails if no member answers within
// DialTimeout. logs are kinds of records that are appended and read, but
// not watched (an audit trail): Watch never sends their changes.
func Open(cfg Config, logs ...string) (*DB, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	for _, e := range cfg.Endpoints {
		if e == "" || strings.ContainsAny(e, " \t") {
			return nil, fmt.Errorf("etcd endpoint %q: want host:port or a URL", e)
		}
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 5 * time.Second
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(cfg.Prefix, "/") {
		cfg.Prefix += "/"
	}
	if cfg.LockTTL <= 0 {
		cfg.LockTTL = DefaultLockTTL
	}
	if cfg.HistoryRetention == 0 {
		cfg.HistoryRetention = DefaultHistoryRetention
	}
	tlsc, err := clientTLS(cfg)
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsc,
		Logger:      zap.NewNop(),
		// A member that stopped answering is noticed within seconds, and
		// requests go to the others.
		DialKeepAliveTime:    2 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	d := &DB{cli: cli, prefix: cfg.Prefix, timeout: cfg.RequestTimeout, lockTTL: int(max(cfg.LockTTL/time.Second, 1)), logs: map[string]bool{},
		retention: cfg.HistoryRetention, closed: make(chan struct{})}
	for _, kind := range logs {
		d.logs[kind] = true
	}
	// clientv3.New does not wait for a connection: ask for one answer, so
	// that a wrong address fails at start and not on the first call.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(ctx, d.prefix+shredKey); err != nil {
		cli.Close()
		return nil, fmt.Errorf("%w: no quorum of etcd at %s answered within %s: is etcd running, and are --etcd-endpoints (and the TLS flags) right? (%w)",
			storage.ErrUnavailable, strings.Join(cfg.Endpoints, ","), cfg.DialTimeout, err)
	}
	return d, nil
}

// clientTLS is the TLS configuration of the files in cfg, or nil if none
// is set.
func clientTLS(cfg Config) (*tls.Config, error) {
	if cfg.CAFile == "" && cfg.CertFile == "" && cfg.KeyFile == "" {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-ca %s: no PEM certificate in it", cfg.CAFile)
		}
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, errors.New("--etcd-cert and --etcd-key go together")
	}
	if cfg.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cert/--etcd-key: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Client is the etcd client, for what the broker does on etcd beside
// storing records (locks, leases).
func (d *DB) Client() *clientv3.Client { return d.cli }

// Limits are etcd's default bounds.
func (d *DB) Limits() storage.Limits { return storage.EtcdLimits }

// Close releases this process's locks and closes the client; watches end
// with storage.ErrClosed.
func (d *DB) Close() error {
	var err error
	d.closeOnce.Do(func() {
		d.sessionMu.Lock()
		if d.session != nil {
			// Revoked, so that its locks and announcement go at once; within
			// the request timeout, not the session's own (its lease's TTL),
			// when etcd is out of reach.
			d.session.Orphan()
			ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
			_, _ = d.cli.Revoke(ctx, d.session.Lease())
			cancel()
		}
		d.sessionMu.Unlock()
		close(d.closed)
		err = d.cli.Close()
	})
	return err
}

// Lock takes the lock name (an etcd mutex on this process's lease), and
// returns the condition that holds while it is held: the lock's key still
// has the revision it was created at, as etcd's Mutex.IsOwner says.
func (d *DB) Lock(ctx context.Context, name string) (storage.Lock, error) {
	s, err := d.lease(ctx)
	if err != nil {
		return storage.Lock{}, err
	}
	m := concurrency.NewMutex(s, d.prefix+locksDir+name)
	err = d.lockMutex(ctx, m)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// The lease ended before the session noticed: start a new one.
		d.dropLease(s)
		if s, err = d.lease(ctx); err != nil {
			return storage.Lock{}, err
		}
		m = concurrency.NewMutex(s, d.prefix+locksDir+name)
		err = d.lockMutex(ctx, m)
	}
	if err != nil {
		return storage.Lock{}, d.wrap(err)
	}
	isOwner := m.IsOwner()
	owner, ok := isOwner.GetCompare().GetTargetUnion().(*etcdserverpb.Compare_CreateRevision)
	if !ok {
		return storage.Lock{}, errors.New("etcd: a mutex without its revision")
	}
	unlock := func() {
		ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
		defer cancel()
		_ = m.Unlock(ctx) // if it fails, the lock goes with the lease
	}
	// The key is never written again after it is created, so its
	// modification revision is its creation revision while it exists.
	return storage.Lock{Held: storage.VersionIs(d.logical([]byte(m.Key())), storage.Version(owner.CreateRevision)), Unlock: unlock}, nil
}

// lockMutex waits for m until ctx ends. A Mutex whose wait is cut short
// removes its key with the client's own context, unbounded, so that with
// etcd out of reach it would wait until the client is closed, which
// happens only after the wait: lockMutex returns at once and leaves that
// to the background (unlocking the mutex if it was taken meanwhile).
func (d *DB) lockMutex(ctx context.Context, m *concurrency.Mutex) error {
	done := make(chan error, 1)
	go func() { done <- m.Lock(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		go func() {
			if <-done == nil {
				ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
				defer cancel()
				_ = m.Unlock(ctx)
			}
		}()
		return ctx.Err()
	}
}

// Announce puts value under replicasDir on this process's lease (the one
// its locks live on), so that it goes when the process dies or loses
// touch for longer than the lease; it writes again only when the lease
// (a new one after a lost one) or the value changed.
func (d *DB) Announce(ctx context.Context, value []byte) error {
	s, err := d.lease(ctx)
	if err != nil {
		return err
	}
	d.announceMu.Lock()
	defer d.announceMu.Unlock()
	if d.announcedOn == s && string(d.announced) == string(value) {
		return nil
	}
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	_, err = d.cli.Put(ctx, d.prefix+replicasDir+strconv.FormatInt(int64(s.Lease()), 16), string(value), clientv3.WithLease(s.Lease()))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		d.dropLease(s) // ended before the session noticed
	}
	if err != nil {
		return d.wrap(err)
	}
	d.announcedOn, d.announced = s, value
	return nil
}

// Announced are the live processes' announcements.
func (d *DB) Announced(ctx context.Context) ([][]byte, error) {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	resp, err := d.cli.Get(ctx, d.prefix+replicasDir, clientv3.WithPrefix())
	if err != nil {
		return nil, d.wrap(err)
	}
	out := make([][]byte, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out[i] = kv.Value
	}
	return out, nil
}

// dropLease forgets s, if it is still the session, so that the next lock
// starts a new one.
func (d *DB) dropLease(s *concurrency.Session) {
	d.sessionMu.Lock()
	defer d.sessionMu.Unlock()
	if d.session == s {
		s.Orphan()
		d.session = nil
	}
}

// lease is this process's session, a new one if the last one expired.
func (d *DB) lease(ctx context.Context) (*concurrency.Session, error) {
	d.sessionMu.Lock()
	defer d.sessionMu.Unlock()
	if d.session != nil {
		select {
		case <-d.session.Done():
		default:
			return d.session, nil
		}
	}
	// The lease is granted within ctx, so that an unreachable etcd fails
	// the lock instead of holding it up; its keep-alives last as long as
	// the client.
	gctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	lease, err := d.cli.Grant(gctx, int64(d.lockTTL))
	if err != nil {
		return nil, d.wrap(err)
	}
	s, err := concurrency.NewSession(d.cli, concurrency.WithLease(lease.ID), concurrency.WithContext(d.cli.Ctx()))
	if err != nil {
		return nil, d.wrap(err)
	}
	d.session = s
	return s, nil
}

// bounded is ctx with the request timeout, unless it has a deadline.
func (d *DB) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d.timeout)
}

// wrap names the engine in err, and maps a closed client to ErrClosed.
func (d *DB) wrap(err error) error {
	select {
	case <-d.closed:
		return storage.ErrClosed
	default:
	}
	if errors.Is(err, context.Canceled) {
		return err
	}
	return fmt.Errorf("%w: etcd: %w", storage.ErrUnavailable, err)
}

// base is where the keys of key's kind live: a log's under logDir, a
// lock's (kind "locks") under locksDir, other records' under dataDir.
func (d *DB) base(key string) string {
	kind, _, _ := strings.Cut(key, "/")
	switch {
	case d.logs[kind]:
		return d.prefix + logDir
	case kind+"/" == locksDir:
		return d.prefix
	}
	return d.prefix + dataDir
}

// physical is key's etcd key.
func (d *DB) physical(key string) string { return d.base(key) + key }

// logical is the storage key of an etcd key.
func (d *DB) logical(k []byte) string {
	rest := string(k[len(d.prefix):])
	if r, ok := strings.CutPrefix(rest, dataDir); ok {
		return r
	}
	if r, ok := strings.CutPrefix(rest, logDir); ok {
		return r
	}
	return rest
}

func (d *DB) record(kv *mvccpb.KeyValue) storage.Record {
	v := kv.Value
	if v == nil {
		v = []byte{}
	}
	return storage.Record{Key: d.logical(kv.Key), Value: v, Version: storage.Version(kv.ModRevision)}
}

// Get reads one record.
func (d *DB) Get(ctx context.Context, key string) (storage.Record, error) {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	resp, err := d.cli.Get(ctx, d.physical(key))
	if err != nil {
		return storage.Record{}, d.wrap(err)
	}
	if len(resp.Kvs) == 0 {
		return storage.Record{}, storage.ErrNotFound
	}
	return d.record(resp.Kvs[0]), nil
}

// List reads a page of the records under r.Prefix, at one revision.
func (d *DB) List(ctx context.Context, r storage.Range) (storage.Page, error) {
	if !strings.Contains(r.Prefix, "/") || strings.HasPrefix(r.Prefix, "/") {
		return storage.Page{}, fmt.Errorf("storage: list prefix %q has no kind (kind/...)", r.Prefix)
	}
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	base := d.base(r.Prefix)
	start, end := base+r.Prefix, base+storage.PrefixEnd(r.Prefix)
	if r.After != "" {
		after := base + r.After
		switch {
		case !r.Reverse && after >= start:
			start = after + "\x00"
		case r.Reverse && after < end:
			end = after
		}
	}
	if from := base + r.From; r.From != "" && from > start {
		start = from
	}
	if start >= end {
		resp, err := d.cli.Get(ctx, d.prefix+shredKey, clientv3.WithCountOnly())
		if err != nil {
			return storage.Page{}, d.wrap(err)
		}
		return storage.Page{Revision: storage.Revision(resp.Header.Revision)}, nil
	}
	if r.Reverse {
		return d.listReverse(ctx, start, end, r.Limit)
	}
	if r.Limit == 0 {
		p := storage.Page{}
		rev, err := d.rangeAt(ctx, start, end, 0, func(kv *mvccpb.KeyValue) error {
			p.Records = append(p.Records, d.record(kv))
			return nil
		})
		p.Revision = storage.Revision(rev)
		return p, err
	}
	resp, err := d.cli.Get(ctx, start, clientv3.WithRange(end), clientv3.WithLimit(int64(r.Limit)))
	if err != nil {
		return storage.Page{}, d.wrap(err)
	}
	return d.page(resp.Kvs, resp.More, resp.Header.Revision), nil
}

// rangePage is how many records rangeAt reads at a time: a single range of
// 100,000 accounts makes etcd build, and the client decode, a response of
// a few hundred megabytes at once; pages of 1,000 made a replica's start
// half as slow again (each page is a linearizable read, agreed by a quorum).
const rangePage = 10000

// rangeAt calls fn with every record of [start, end), read a page at a
// time at revision rev (0: the revision of the first page), and returns
// that revision.
func (d *DB) rangeAt(ctx context.Context, start, end string, rev int64, fn func(*mvccpb.KeyValue) error) (int64, error) {
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(rangePage)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		pctx, cancel := d.bounded(ctx)
		resp, err := d.cli.Get(pctx, start, opts...)
		cancel()
		if err != nil {
			return 0, d.wrap(err)
		}
		if rev == 0 {
			rev = resp.Header.Revision // with WithRev, the header has the latest revision instead
		}
		for _, kv := range resp.Kvs {
			if err := fn(kv); err != nil {
				return 0, err
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// listReverse reads the last limit records of [start, end), newest key
// first. etcd sorts a descending range in memory, reading every record of
// it first; so it sorts the keys alone, and then reads the page's values
// at the same revision.
func (d *DB) listReverse(ctx context.Context, start, end string, limit int) (storage.Page, error) {
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}
	if limit > 0 {
		opts = append(opts, clientv3.WithLimit(int64(limit)))
	}
	keys, err := d.cli.Get(ctx, start, opts...)
	if err != nil {
		return storage.Page{}, d.wrap(err)
	}
	if len(keys.Kvs) == 0 {
		return storage.Page{Revision: storage.Revision(keys.Header.Revision)}, nil
	}
	first, last := string(keys.Kvs[len(keys.Kvs)-1].Key), string(keys.Kvs[0].Key)
	resp, err := d.cli.Get(ctx, first, clientv3.WithRange(last+"\x00"), clientv3.WithRev(keys.Header.Revision),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend))
	if err != nil {
		return storage.Page{}, d.wrap(err)
	}
	return d.page(resp.Kvs, keys.More, keys.Header.Revision), nil
}

func (d *DB) page(kvs []*mvccpb.KeyValue, more bool, rev int64) storage.Page {
	p := storage.Page{More: more, Revision: storage.Revision(rev), Records: make([]storage.Record, 0, len(kvs))}
	for _, kv := range kvs {
		p.Records = append(p.Records, d.record(kv))
	}
	return p
}

// Count is how many records are under prefix.
func (d *DB) Count(ctx context.Context, prefix string) (int64, error) {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	resp, err := d.cli.Get(ctx, d.physical(prefix), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, d.wrap(err)
	}
	return resp.Count, nil
}

// Txn commits ops if conds hold, in one etcd transaction.
func (d *DB) Txn(ctx context.Context, conds []storage.Cond, ops []storage.Op) (storage.Revision, error) {
	if err := storage.EtcdLimits.Check(conds, ops); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	cmps := make([]clientv3.Cmp, 0, len(conds))
	for _, c := range conds {
		k := d.physical(c.Key)
		switch {
		case c.Exists:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), ">", 0))
		case c.Version == storage.Absent:
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
		default:
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", int64(c.Version)))
		}
	}
	writes, shred := d.writes(ops)
	if shred {
		// The marker's modification revision is this commit's.
		writes = append(writes, clientv3.OpPut(d.prefix+shredKey, ""))
	}
	resp, err := d.cli.Txn(ctx).If(cmps...).Then(writes...).Commit()
	if err != nil {
		return 0, d.wrap(err)
	}
	if !resp.Succeeded {
		return 0, storage.ErrConflict
	}
	return storage.Revision(resp.Header.Revision), nil
}

// writes are ops as etcd operations: etcd refuses a transaction that
// writes one key twice, so only the last op on each key is kept, which
// leaves the same records.
func (d *DB) writes(ops []storage.Op) ([]clientv3.Op, bool) {
	last := make(map[string]int, len(ops))
	for i, op := range ops {
		last[op.Key] = i
	}
	out := make([]clientv3.Op, 0, len(ops)+1)
	shred := false
	for i, op := range ops {
		shred = shred || op.Shred
		if last[op.Key] != i {
			continue
		}
		if op.Delete {
			out = append(out, clientv3.OpDelete(d.physical(op.Key)))
		} else {
			out = append(out, clientv3.OpPut(d.physical(op.Key), string(op.Value)))
		}
	}
	return out, shred
}

// Watch sends committed changes under prefix after revision after.
func (d *DB) Watch(ctx context.Context, prefix string, after storage.Revision) <-chan storage.Change {
	out := make(chan storage.Change, 16)
	go d.follow(ctx, prefix, after, out)
	return out
}

// progressInterval is how often a watch asks etcd to report how far it
// has sent the changes (see storage.Change.Current).
const progressInterval = 200 * time.Millisecond

// follow passes the watch's changes to out, one per revision, and its
// progress reports, until ctx ends or the watch fails; then it closes out.
func (d *DB) follow(ctx context.Context, prefix string, after storage.Revision, out chan<- storage.Change) {
	defer close(out)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	marked := make(chan progressMark, 16)
	go d.mark(wctx, marked)
	send := func(c storage.Change) bool {
		select {
		case out <- c:
			return true
		case <-ctx.Done():
			return false
		}
	}
	// sent is the revision up to which every change has been sent: the
	// watch starts after one whose changes its watcher holds already.
	sent := int64(after)
	var marks []progressMark
	wch := d.cli.Watch(wctx, d.prefix+dataDir+prefix, clientv3.WithPrefix(), clientv3.WithRev(int64(after)+1))
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-marked:
			marks = append(marks, m)
		case resp, ok := <-wch:
			switch {
			case !ok && ctx.Err() != nil:
				return
			case !ok:
				select {
				case <-d.closed:
					send(storage.Change{Revision: storage.Revision(sent), Err: storage.ErrClosed})
				default:
					send(storage.Change{Revision: storage.Revision(sent), Err: d.wrap(errors.New("the watch ended"))})
				}
				return
			case resp.CompactRevision != 0:
				send(storage.Change{Revision: storage.Revision(sent),
					Err: fmt.Errorf("%w (etcd compacted its history up to revision %d)", storage.ErrCompacted, resp.CompactRevision)})
				return
			case resp.Err() != nil:
				send(storage.Change{Revision: storage.Revision(sent), Err: d.wrap(resp.Err())})
				return
			case resp.IsProgressNotify():
				sent = max(sent, resp.Header.Revision)
			}
			for _, c := range d.changes(resp.Events) {
				if !send(c) {
					return
				}
				sent = int64(c.Revision)
			}
		}
		// The marks that what was sent covers: the watch was current at
		// the latest one's time.
		n := 0
		for n < len(marks) && marks[n].rev <= sent {
			n++
		}
		if n > 0 {
			at := marks[n-1].at
			marks = marks[n:]
			if !send(storage.Change{Revision: storage.Revision(sent), Current: at}) {
				return
			}
		}
	}
}

// mark notes, every progressInterval until ctx ends, etcd's revision and
// the time (a mark), and asks etcd to report the watch's progress on its
// stream: once the watch has sent every change up to a mark's revision (a
// report, or an event at or past it), it was current at the mark's time.
// etcd skips a report while the watch is catching up or waiting for its
// first revision; events, or the next report, cover its marks then.
func (d *DB) mark(ctx context.Context, marked chan<- progressMark) {
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		at := time.Now()
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := d.cli.Get(rctx, d.prefix+shredKey, clientv3.WithCountOnly())
		cancel()
		if err != nil {
			continue
		}
		select {
		case marked <- progressMark{at, resp.Header.Revision}:
		case <-ctx.Done():
			return
		}
		_ = d.cli.RequestProgress(ctx)
	}
}

// progressMark is etcd's revision at a time (see follow).
type progressMark struct {
	at  time.Time
	rev int64
}

// changes groups a watch response's events by revision (one transaction
// each).
func (d *DB) changes(events []*clientv3.Event) []storage.Change {
	var out []storage.Change
	for _, e := range events {
		k := d.logical(e.Kv.Key)
		rev := storage.Revision(e.Kv.ModRevision)
		if len(out) == 0 || out[len(out)-1].Revision != rev {
			out = append(out, storage.Change{Revision: rev})
		}
		ev := storage.Event{Key: k, Deleted: e.Type == mvccpb.DELETE}
		if !ev.Deleted {
			r := d.record(e.Kv)
			ev.Value, ev.Version = r.Value, r.Version
		}
		c := &out[len(out)-1]
		c.Events = append(c.Events, ev)
	}
	return out
}

// Snapshot calls fn with every record and log record, read at the
// revision of the first read, which it returns.
func (d *DB) Snapshot(ctx context.Context, fn func(storage.Record) error) (storage.Revision, error) {
	var rev int64
	for _, dir := range []string{dataDir, logDir} {
		var err error
		rev, err = d.rangeAt(ctx, d.prefix+dir, d.prefix+storage.PrefixEnd(dir), rev, func(kv *mvccpb.KeyValue) error {
			return fn(d.record(kv))
		})
		if err != nil {
			return 0, err
		}
	}
	return storage.Revision(rev), nil
}

// loadBatch is how many records Load gathers before writing them.
const loadBatch = 1000

// ErrNotEmpty means Load was given a prefix that holds a broker's records.
var ErrNotEmpty = errors.New("the etcd prefix holds a broker's records already")

// Load writes records (a backup's, which each calls put with) into a
// prefix that holds none. It first sets a marker, on the condition that
// no record is there (or that the marker of an interrupted Load is, whose
// partial records it deletes), then writes the records in transactions
// within etcd's limits, and removes the marker last: a broker does not
// start on a prefix that has it (see Loading), so none ever serves half a
// backup, and running Load again finishes an interrupted one.
func (d *DB) Load(ctx context.Context, each func(put func(storage.Record) error) error) error {
	marker := d.prefix + loadingKey
	empty := []clientv3.Cmp{
		clientv3.Compare(clientv3.CreateRevision(d.prefix+dataDir).WithPrefix(), "=", 0),
		clientv3.Compare(clientv3.CreateRevision(d.prefix+logDir).WithPrefix(), "=", 0),
	}
	resp, err := d.cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(marker), ">", 0)).
		Then(clientv3.OpDelete(d.prefix+dataDir, clientv3.WithPrefix()), clientv3.OpDelete(d.prefix+logDir, clientv3.WithPrefix())).
		Else(clientv3.OpTxn(empty, []clientv3.Op{clientv3.OpPut(marker, "")}, nil)).Commit()
	if err != nil {
		return d.wrap(err)
	}
	if !resp.Succeeded && !resp.Responses[0].GetResponseTxn().GetSucceeded() {
		return fmt.Errorf("%w (prefix %q)", ErrNotEmpty, d.prefix)
	}
	var batch []storage.Op
	flush := func() error {
		for _, chunk := range storage.EtcdLimits.Chunks(batch) {
			if _, err := d.Txn(ctx, nil, chunk); err != nil {
				return err
			}
		}
		batch = batch[:0]
		return nil
	}
	err = each(func(r storage.Record) error {
		batch = append(batch, storage.Put(r.Key, r.Value))
		if len(batch) < loadBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return err
	}
	if _, err := d.cli.Delete(ctx, marker); err != nil {
		return d.wrap(err)
	}
	return nil
}

// Loading reports whether a Load into the prefix has not finished.
func (d *DB) Loading(ctx context.Context) (bool, error) {
	ctx, cancel := d.bounded(ctx)
	defer cancel()
	resp, err := d.cli.Get(ctx, d.prefix+loadingKey, clientv3.WithCountOnly())
	if err != nil {
		return false, d.wrap(err)
	}
	return resp.Count > 0, nil
}

type revisionAt struct {
	at  time.Time
	rev int64
}

// TrimHistory notes the current revision and compacts etcd's history up
// to the latest revision noted at least HistoryRetention before now, if
// any: call it periodically. Watchers further behind than that read afresh
// (storage.ErrCompacted).
func (d *DB) TrimHistory(now time.Time) error {
	if d.retention < 0 {
		return nil
	}
	ctx, cancel := d.bounded(context.Background())
	defer cancel()
	resp, err := d.cli.Get(ctx, d.prefix+shredKey, clientv3.WithCountOnly())
	if err != nil {
		return d.wrap(err)
	}
	d.trimMu.Lock()
	d.revisions = append(d.revisions, revisionAt{now, resp.Header.Revision})
	upTo := int64(0)
	for len(d.revisions) > 0 && !d.revisions[0].at.After(now.Add(-d.retention)) {
		upTo = d.revisions[0].rev
		d.revisions = d.revisions[1:]
	}
	d.trimMu.Unlock()
	if upTo == 0 {
		return nil
	}
	if _, err := d.cli.Compact(ctx, upTo); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return d.wrap(err)
	}
	return nil
}

// CompactPending reports whether a shredding commit's history is still
// kept.
func (d *DB) CompactPending() (bool, error) {
	ctx, cancel := d.bounded(context.Background())
	defer cancel()
	resp, err := d.cli.Get(ctx, d.prefix+shredKey)
	if err != nil {
		return false, d.wrap(err)
	}
	return len(resp.Kvs) > 0, nil
}

// Compact removes the history of the latest shredding commit: it compacts
// etcd's history up to the marker's revision, and then removes the
// marker (if no shredding commit came meanwhile). Watchers from before
// the compaction get storage.ErrCompacted and read afresh.
func (d *DB) Compact() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*d.timeout)
	defer cancel()
	resp, err := d.cli.Get(ctx, d.prefix+shredKey)
	if err != nil || len(resp.Kvs) == 0 {
		return d.wrapNil(err)
	}
	marker := resp.Kvs[0]
	// The marker was written in the shredding commit, so its revision is
	// that commit's, and every earlier value is history before it.
	_, err = d.cli.Compact(ctx, marker.ModRevision, clientv3.WithCompactPhysical())
	if err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return d.wrap(err)
	}
	_, err = d.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(d.prefix+shredKey), "=", marker.ModRevision)).
		Then(clientv3.OpDelete(d.prefix + shredKey)).Commit()
	return d.wrapNil(err)
}

func (d *DB) wrapNil(err error) error {
	if err == nil {
		return nil
	}
	return d.wrap(err)
}

// String names the engine in logs.
func (d *DB) String() string {
	return "etcd " + strings.Join(d.cli.Endpoints(), ",") + " prefix " + strconv.Quote(d.prefix)
}
