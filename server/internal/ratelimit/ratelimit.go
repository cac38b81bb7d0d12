// Package ratelimit gives each caller principal its own token bucket, so
// that one busy or broken caller cannot starve the others. The same
// buckets, keyed by peer address, bound the calls that fail authentication.
package ratelimit

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter holds one bucket per principal. Principals are proven identities,
// so their number is bounded by the keys and certificates an admin issued.
type Limiter struct {
	rate    rate.Limit
	burst   int
	buckets sync.Map // principal -> *rate.Limiter
}

// New allows each principal perSecond calls a second on average, and up to
// burst at once. perSecond <= 0 turns limiting off.
func New(perSecond float64, burst int) *Limiter {
	if perSecond <= 0 {
		return &Limiter{rate: rate.Inf}
	}
	return &Limiter{rate: rate.Limit(perSecond), burst: max(burst, 1)}
}

// Allow takes a token from principal's bucket, or says how long until one
// is available.
func (l *Limiter) Allow(principal string, now time.Time) (bool, time.Duration) {
	if l.rate == rate.Inf {
		return true, 0
	}
	r := l.bucket(principal).ReserveN(now, 1)
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

func (l *Limiter) bucket(key string) *rate.Limiter {
	b, ok := l.buckets.Load(key)
	if !ok {
		b, _ = l.buckets.LoadOrStore(key, rate.NewLimiter(l.rate, l.burst))
	}
	return b.(*rate.Limiter)
}

// Wait is how long until key's bucket holds a token again; 0 if it holds
// one now. It takes nothing: with Charge, callers are charged only for
// calls that turn out to count.
func (l *Limiter) Wait(key string, now time.Time) time.Duration {
	if l.rate == rate.Inf {
		return 0
	}
	b, ok := l.buckets.Load(key)
	if !ok {
		return 0
	}
	if missing := 1 - b.(*rate.Limiter).TokensAt(now); missing > 0 {
		return time.Duration(missing / float64(l.rate) * float64(time.Second))
	}
	return 0
}

// Charge takes a token from key's bucket if it holds one.
func (l *Limiter) Charge(key string, now time.Time) {
	if l.rate != rate.Inf {
		l.bucket(key).AllowN(now, 1)
	}
}

// Forget drops the buckets that are full again at now: they are the same
// as new ones. A limiter keyed by something callers choose (a peer
// address) calls it now and then, so that it holds only keys seen lately.
func (l *Limiter) Forget(now time.Time) {
	l.buckets.Range(func(k, b any) bool {
		if b.(*rate.Limiter).TokensAt(now) >= float64(l.burst) {
			l.buckets.Delete(k)
		}
		return true
	})
}
