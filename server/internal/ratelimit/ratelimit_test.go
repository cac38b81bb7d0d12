package ratelimit

import (
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// t0 is the clock's start; every call passes its own time, so nothing here
// sleeps or depends on how fast the test runs.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

// call is one Allow and what it must answer.
type call struct {
	at        time.Duration // since t0
	principal string
	allowed   bool
	wait      time.Duration // when refused
}

func TestAllow(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		perSecond       float64
		burst           int
		calls           []call
		wantNeverRefuse bool
	}{
		{
			name: "burst at once, then one a second", perSecond: 1, burst: 3,
			calls: []call{
				{0, "a", true, 0}, {0, "a", true, 0}, {0, "a", true, 0},
				{0, "a", false, time.Second},
				{999 * time.Millisecond, "a", false, time.Millisecond},
				{time.Second, "a", true, 0},
				{time.Second, "a", false, time.Second},
			},
		},
		{
			// A refused call takes nothing: had it taken a token, the
			// call at 1s would wait another second.
			name: "refused calls take no token", perSecond: 1, burst: 1,
			calls: []call{
				{0, "a", true, 0},
				{0, "a", false, time.Second},
				{0, "a", false, time.Second},
				{500 * time.Millisecond, "a", false, 500 * time.Millisecond},
				{time.Second, "a", true, 0},
			},
		},
		{
			name: "the bucket refills up to the burst only", perSecond: 2, burst: 2,
			calls: []call{
				{0, "a", true, 0}, {0, "a", true, 0},
				{0, "a", false, 500 * time.Millisecond},
				{time.Hour, "a", true, 0}, {time.Hour, "a", true, 0},
				{time.Hour, "a", false, 500 * time.Millisecond},
			},
		},
		{
			name: "each principal has its own bucket", perSecond: 1, burst: 1,
			calls: []call{
				{0, "a", true, 0},
				{0, "a", false, time.Second},
				{0, "b", true, 0},
				{0, "b", false, time.Second},
				{0, "a", false, time.Second},
			},
		},
		{
			name: "a burst below 1 is 1", perSecond: 10, burst: 0,
			calls: []call{
				{0, "a", true, 0},
				{0, "a", false, 100 * time.Millisecond},
				{100 * time.Millisecond, "a", true, 0},
			},
		},
		{
			name: "negative burst is 1", perSecond: 10, burst: -5,
			calls: []call{{0, "a", true, 0}, {0, "a", false, 100 * time.Millisecond}},
		},
		{name: "rate 0 turns limiting off", perSecond: 0, burst: 1, wantNeverRefuse: true},
		{name: "negative rate turns limiting off", perSecond: -1, burst: 1, wantNeverRefuse: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := New(tc.perSecond, tc.burst)
			if tc.wantNeverRefuse {
				for i := range 1000 {
					if ok, d := l.Allow("a", t0); !ok || d != 0 {
						t.Fatalf("call %d: Allow = %v, %v; want true, 0", i, ok, d)
					}
				}
				return
			}
			for i, c := range tc.calls {
				ok, d := l.Allow(c.principal, t0.Add(c.at))
				if ok != c.allowed || d != c.wait {
					t.Fatalf("call %d (%s at %v): Allow = %v, %v; want %v, %v", i, c.principal, c.at, ok, d, c.allowed, c.wait)
				}
			}
		})
	}
}

// Wait says how long until a token without taking one; Charge takes one
// if there is one, and never runs the bucket into debt.
func TestWaitAndCharge(t *testing.T) {
	t.Parallel()
	l := New(1, 2)
	if d := l.Wait("peer", t0); d != 0 {
		t.Fatalf("Wait for an unseen key = %v, want 0", d)
	}
	l.Charge("peer", t0)
	if d := l.Wait("peer", t0); d != 0 {
		t.Fatalf("Wait with one token left = %v, want 0", d)
	}
	l.Charge("peer", t0)
	for range 3 { // Wait takes nothing
		if d := l.Wait("peer", t0); d != time.Second {
			t.Fatalf("Wait on an empty bucket = %v, want 1s", d)
		}
	}
	if d := l.Wait("peer", t0.Add(250*time.Millisecond)); d != 750*time.Millisecond {
		t.Fatalf("Wait a quarter second later = %v, want 750ms", d)
	}
	for range 5 { // charging an empty bucket takes nothing more
		l.Charge("peer", t0)
	}
	if d := l.Wait("peer", t0.Add(time.Second)); d != 0 {
		t.Fatalf("Wait a second after the bucket emptied = %v, want 0 (Charge ran it into debt)", d)
	}
	if d := l.Wait("other", t0); d != 0 {
		t.Fatalf("Wait for another key = %v, want 0", d)
	}
	// Charge and Allow share the bucket.
	if ok, d := l.Allow("peer", t0.Add(500*time.Millisecond)); ok || d != 500*time.Millisecond {
		t.Fatalf("Allow on a charged bucket = %v, %v; want false, 500ms", ok, d)
	}
}

func TestOffNeverWaits(t *testing.T) {
	t.Parallel()
	l := New(0, 0)
	for range 100 {
		l.Charge("peer", t0)
	}
	if d := l.Wait("peer", t0); d != 0 {
		t.Fatalf("Wait with limiting off = %v, want 0", d)
	}
	l.Forget(t0)
	if n := buckets(l); n != 0 {
		t.Fatalf("a limiter that is off holds %d buckets", n)
	}
}

// Forget drops full buckets only; a bucket that is not full is kept, with
// its tokens.
func TestForget(t *testing.T) {
	t.Parallel()
	l := New(1, 2)
	l.Charge("full-again", t0)
	l.Charge("half", t0.Add(time.Second))
	l.Charge("half", t0.Add(time.Second))
	l.Charge("empty", t0.Add(2*time.Second))
	l.Charge("empty", t0.Add(2*time.Second))
	if n := buckets(l); n != 3 {
		t.Fatalf("%d buckets before Forget, want 3", n)
	}

	now := t0.Add(2 * time.Second)
	l.Forget(now)
	if got, want := keys(l), map[string]bool{"half": true, "empty": true}; !maps.Equal(got, want) {
		t.Fatalf("buckets after Forget: %v, want %v", got, want)
	}
	if d := l.Wait("empty", now); d != time.Second {
		t.Fatalf("Wait on a kept bucket = %v, want 1s", d)
	}
	l.Forget(now.Add(time.Hour))
	if n := buckets(l); n != 0 {
		t.Fatalf("%d buckets after every bucket filled up, want 0", n)
	}
}

// Goroutines that call at the same instant get exactly the burst between
// them, also on a key's first call: that call makes one bucket only, however
// many goroutines make it at once.
func TestAllowConcurrent(t *testing.T) {
	t.Parallel()
	const goroutines, keys = 8, 2000
	l := New(1, 1)
	var allowed [keys]atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			<-start
			for k := range keys {
				if ok, _ := l.Allow(fmt.Sprint("peer-", k), t0); ok {
					allowed[k].Add(1)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	for k := range keys {
		if n := allowed[k].Load(); n != 1 {
			t.Errorf("peer-%d: %d of %d concurrent calls allowed, want the burst, 1", k, n, goroutines)
		}
	}
}

func buckets(l *Limiter) int { return len(keys(l)) }

func keys(l *Limiter) map[string]bool {
	m := map[string]bool{}
	l.buckets.Range(func(k, _ any) bool {
		m[k.(string)] = true
		return true
	})
	return m
}
