package main

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// batchedWriter collects serve's log lines and writes them together: a busy
// broker logs a line per call, and a write system call per line costs it
// more than the line's formatting. A line waits at most flushInterval;
// lines at Warn and above are written at once (flushOnWarn), and Close
// writes the rest.
type batchedWriter struct {
	mu   sync.Mutex
	w    io.Writer
	buf  []byte
	stop chan struct{}
	done chan struct{}
}

const (
	flushInterval = 100 * time.Millisecond
	flushAtBytes  = 64 << 10
)

func newBatchedWriter(w io.Writer) *batchedWriter {
	b := &batchedWriter{w: w, stop: make(chan struct{}), done: make(chan struct{})}
	go b.run()
	return b
}

func (b *batchedWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) >= flushAtBytes {
		return len(p), b.flushLocked()
	}
	return len(p), nil
}

// Flush writes the lines collected so far.
func (b *batchedWriter) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.flushLocked()
}

func (b *batchedWriter) flushLocked() error {
	if len(b.buf) == 0 {
		return nil
	}
	_, err := b.w.Write(b.buf)
	b.buf = b.buf[:0]
	return err
}

func (b *batchedWriter) run() {
	defer close(b.done)
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			_ = b.Flush()
		}
	}
}

// Close writes the rest and stops the writer's clock.
func (b *batchedWriter) Close() error {
	close(b.stop)
	<-b.done
	return b.Flush()
}

// flushOnWarn is a handler whose lines at Warn and above are written at
// once: an operator watching a failure sees it when it happens.
type flushOnWarn struct {
	slog.Handler
	out *batchedWriter
}

func (h flushOnWarn) Handle(ctx context.Context, r slog.Record) error {
	err := h.Handler.Handle(ctx, r)
	if r.Level >= slog.LevelWarn {
		_ = h.out.Flush()
	}
	return err
}

func (h flushOnWarn) WithAttrs(attrs []slog.Attr) slog.Handler {
	return flushOnWarn{h.Handler.WithAttrs(attrs), h.out}
}

func (h flushOnWarn) WithGroup(name string) slog.Handler {
	return flushOnWarn{h.Handler.WithGroup(name), h.out}
}
