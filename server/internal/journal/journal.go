// Package journal is an append-only file of records that are durable once
// Append returns, for a writer that cannot afford a database transaction
// per batch: one write of the whole batch into space allocated beforehand,
// on a file opened with O_DSYNC, so that a batch costs one system call and
// one flush of data, never of the file's metadata. The journal's reader
// (the audit trail) indexes its records into the database later, in large
// transactions, and then hands the segments it indexed back for reuse.
//
// The journal is a directory of segments, numbered in the order they were
// started. Each record is framed as the segment's number (8 bytes), its
// length (4 bytes), the record, and an HMAC-SHA256 of all three under the
// database's MAC key: a torn write at a crash, the records of the file's
// earlier life as another segment, and a record altered or planted on
// disk all end a segment's readable records, and none is ever taken for
// one the broker wrote.
package journal

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/credbroker/credbroker/server/internal/keyring"
)

const (
	suffix     = ".journal"
	headSize   = 8 + 4 // segment number, record length
	macSize    = 32
	macPurpose = "audit-journal"
)

// DefaultSegmentSize is the size of a segment: more than the events of
// the broker's busiest second, written once as zeros when the segment is
// first made and reused from then on.
const DefaultSegmentSize = 4 << 20

// Journal appends records to its current segment. Append and Cut are for
// one goroutine at a time; Prepare and Recycle may run on another.
type Journal struct {
	dir  string
	mac  *keyring.MACKey
	size int64

	mu    sync.Mutex // guards spare and seq
	spare *segment   // the next segment, if ready
	seq   uint64     // the number of the newest segment

	cur    *segment  // where Append writes
	filled []Segment // segments filled since the last Cut
}

// segment is one file of the journal.
type segment struct {
	f    *os.File
	path string
	n    uint64 // its number, in every frame written to it
	off  int64  // where the next record goes
	size int64
}

// Segment is a segment whose records are all written: Recycle hands it
// back once they are indexed elsewhere.
type Segment struct{ path string }

// Open opens the journal in dir (made, private, if missing). Records left
// by an earlier process are read by Recover; Append writes to new
// segments only. segmentSize <= 0 means DefaultSegmentSize.
func Open(dir string, mac *keyring.MACKey, segmentSize int64) (*Journal, error) {
	if segmentSize <= 0 {
		segmentSize = DefaultSegmentSize
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	j := &Journal{dir: dir, mac: mac, size: segmentSize}
	names, err := j.segments()
	if err != nil {
		return nil, err
	}
	if len(names) > 0 {
		j.seq, _ = segmentNumber(names[len(names)-1])
	}
	return j, nil
}

// segments lists the segment files, oldest first.
func (j *Journal) segments() ([]string, error) {
	entries, err := os.ReadDir(j.dir)
	if err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	var names []string
	for _, e := range entries {
		if _, ok := segmentNumber(e.Name()); ok && e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // fixed-width numbers sort as numbers
	return names, nil
}

func segmentName(n uint64) string { return fmt.Sprintf("%016x%s", n, suffix) }

func segmentNumber(name string) (uint64, bool) {
	n, err := strconv.ParseUint(strings.TrimSuffix(name, suffix), 16, 64)
	return n, err == nil && strings.HasSuffix(name, suffix) && len(name) == 16+len(suffix)
}

// Recovered is what an earlier process left in the journal.
type Recovered struct {
	// Records, in the order they were written.
	Records [][]byte
	// Unreadable describes each segment whose records end with one that
	// claims to be of the segment but fails its MAC: the last write torn
	// by a crash (its callers never heard it was written), or a record
	// altered or planted on disk.
	Unreadable []string
	paths      []string
}

// Done removes the recovered segments, once their records are indexed.
func (r *Recovered) Done() error {
	var errs []error
	for _, p := range r.paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Recover reads the segments an earlier process left. Call it before the
// first Append.
func (j *Journal) Recover() (*Recovered, error) {
	names, err := j.segments()
	if err != nil {
		return nil, err
	}
	r := &Recovered{}
	for _, name := range names {
		path := filepath.Join(j.dir, name)
		n, _ := segmentNumber(name)
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("audit journal: %w", err)
		}
		recs, end := j.read(n, data)
		r.Records = append(r.Records, recs...)
		if end+headSize <= len(data) && binary.BigEndian.Uint64(data[end:]) == n {
			r.Unreadable = append(r.Unreadable, fmt.Sprintf("%s: %d records, then one that is not whole or not authentic at byte %d", path, len(recs), end))
		}
		r.paths = append(r.paths, path)
	}
	return r, nil
}

// read returns the records of segment n in data, up to the first frame
// that is not a whole, authentic record of n, and where that frame starts.
func (j *Journal) read(n uint64, data []byte) (recs [][]byte, end int) {
	for end+headSize <= len(data) && binary.BigEndian.Uint64(data[end:]) == n {
		size := int(binary.BigEndian.Uint32(data[end+8:]))
		frame := headSize + size + macSize
		if size == 0 || end+frame > len(data) {
			break
		}
		body := data[end : end+headSize+size]
		if !hmac.Equal(data[end+headSize+size:end+frame], j.appendSum(nil, body)) {
			break
		}
		recs = append(recs, bytes.Clone(body[headSize:]))
		end += frame
	}
	return recs, end
}

// appendSum appends the tag of a frame's body to dst.
func (j *Journal) appendSum(dst, body []byte) []byte { return j.mac.AppendSum(dst, macPurpose, body) }

// maxWrite bounds one write: larger batches are written in parts.
const maxWrite = 1 << 20

// Append writes recs at the end of the current segment, moving to a new
// one when it is full, and returns once they are on disk.
func (j *Journal) Append(recs [][]byte) error {
	if j.cur == nil {
		if err := j.next(); err != nil {
			return err
		}
	}
	size := 0
	for _, rec := range recs {
		size += headSize + len(rec) + macSize
	}
	buf := make([]byte, 0, min(size, maxWrite)) // not grown frame by frame
	for _, rec := range recs {
		frame := int64(headSize + len(rec) + macSize)
		if len(rec) == 0 || frame > min(maxWrite, j.size) {
			return fmt.Errorf("audit journal: a record of %d bytes", len(rec))
		}
		if len(buf) > 0 && (len(buf)+int(frame) > maxWrite || j.cur.off+int64(len(buf))+frame > j.cur.size) {
			if err := j.write(buf); err != nil {
				return err
			}
			buf = buf[:0]
		}
		if j.cur.off+frame > j.cur.size {
			if err := j.next(); err != nil {
				return err
			}
		}
		start := len(buf)
		buf = binary.BigEndian.AppendUint64(buf, j.cur.n)
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(rec)))
		buf = append(buf, rec...)
		buf = j.appendSum(buf, buf[start:])
	}
	return j.write(buf)
}

// write writes frames of the current segment at its end.
func (j *Journal) write(buf []byte) error {
	if len(buf) == 0 {
		return nil
	}
	if _, err := j.cur.f.WriteAt(buf, j.cur.off); err != nil {
		// The segment may hold part of the batch: later batches go to
		// a new one, never after a torn write.
		j.cur.off = j.cur.size
		return fmt.Errorf("audit journal: %w", err)
	}
	j.cur.off += int64(len(buf))
	return nil
}

// next moves Append to a new segment, keeping the current one, if any
// records went into it, for the next Cut.
func (j *Journal) next() error {
	s, err := j.take()
	if err != nil {
		return err
	}
	if old := j.cur; old != nil {
		old.f.Close()
		if old.off > 0 {
			j.filled = append(j.filled, Segment{path: old.path})
		} else {
			j.Recycle(Segment{path: old.path})
		}
	}
	j.cur = s
	return nil
}

// Cut ends the current segment if any records went into it, and returns
// it with every other segment filled since the last Cut: all the records
// appended so far are in them, for the caller to index and then Recycle.
func (j *Journal) Cut() ([]Segment, error) {
	if j.cur != nil && j.cur.off > 0 {
		if err := j.next(); err != nil {
			return nil, err
		}
	}
	filled := j.filled
	j.filled = nil
	return filled, nil
}

// take returns the spare segment, or makes one now.
func (j *Journal) take() (*segment, error) {
	j.mu.Lock()
	s := j.spare
	j.spare = nil
	j.mu.Unlock()
	if s != nil {
		return s, nil
	}
	return j.create("")
}

// Prepare makes a spare segment ahead of time, off the writer's path.
func (j *Journal) Prepare() error {
	j.mu.Lock()
	ready := j.spare != nil
	j.mu.Unlock()
	if ready {
		return nil
	}
	s, err := j.create("")
	if err != nil {
		return err
	}
	j.keep(s)
	return nil
}

// Recycle hands back a segment whose records are indexed: it becomes the
// spare under a new number (its old frames no longer count: they carry
// the old one), or is removed if there is a spare already.
func (j *Journal) Recycle(seg Segment) error {
	j.mu.Lock()
	ready := j.spare != nil
	j.mu.Unlock()
	if ready {
		return os.Remove(seg.path)
	}
	s, err := j.create(seg.path)
	if err != nil {
		return err
	}
	j.keep(s)
	return nil
}

// keep makes s the spare, unless there is one already.
func (j *Journal) keep(s *segment) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.spare == nil {
		j.spare = s
		return
	}
	s.f.Close()
	os.Remove(s.path)
}

// create makes a segment under the next number: from the file at reuse if
// set (its blocks are allocated already), else a new zero-filled one. The
// file is synced, and the directory, so that a record written to it is
// found after a crash.
func (j *Journal) create(reuse string) (*segment, error) {
	j.mu.Lock()
	j.seq++
	n := j.seq
	j.mu.Unlock()
	path := filepath.Join(j.dir, segmentName(n))
	var err error
	if reuse != "" {
		err = os.Rename(reuse, path)
	} else {
		tmp := path + ".new"
		if err = writeZeros(tmp, j.size); err == nil {
			err = os.Rename(tmp, path)
		}
		if err != nil {
			os.Remove(tmp)
		}
	}
	if err == nil {
		err = syncDir(j.dir)
	}
	if err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DSYNC, 0)
	if err != nil {
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit journal: %w", err)
	}
	return &segment{f: f, path: path, n: n, size: fi.Size()}, nil
}

// writeZeros writes a file of size zero bytes and syncs it: its blocks are
// allocated, so writing records over them changes no metadata.
func writeZeros(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for left := size; left > 0 && err == nil; left -= int64(len(zeros)) {
		_, err = f.Write(zeros[:min(left, int64(len(zeros)))])
	}
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Close closes the journal. Segments that hold records stay, for the next
// process to recover (Cut and Recycle them first to leave none); empty
// ones are removed, and the directory if nothing is left in it.
func (j *Journal) Close() error {
	var errs []error
	if j.cur != nil {
		errs = append(errs, j.cur.f.Close())
		if j.cur.off == 0 {
			errs = append(errs, os.Remove(j.cur.path))
		}
		j.cur = nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.spare != nil {
		errs = append(errs, j.spare.f.Close(), os.Remove(j.spare.path))
		j.spare = nil
	}
	_ = os.Remove(j.dir) // if empty: nothing is left to recover
	return errors.Join(errs...)
}
